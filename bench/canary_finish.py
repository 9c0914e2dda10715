"""After bench/canary_window.sh: its table (and the trace's attribution of the slow gaps) into docs/reliability.md
in place of the FIGURES line.   python bench/canary_finish.py [bench/results/canary] [docs/reliability.md]"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/canary")
doc = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/reliability.md")
script = Path(__file__).with_name("canary_window.sh").read_text()
summary = script.split("python - \"$OUT\" <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
table = subprocess.run([sys.executable, "-c", summary, str(out)], capture_output=True, text=True, check=True).stdout
lines = [table.rstrip()]
trace = out / "trace.json"
if trace.exists():
    t = json.loads(trace.read_text())
    L = t["loaded"]
    a = L.get("over_2x_quiet_max", {})
    lines.append("")
    who = "normal" if t["attacker"].get("policy") == "other" else t["attacker"].get("policy")
    lines.append(f"The trace run (its diagnostic's overhead included; attacker {who}): canary under fuzz "
                 f"p50 {t['canary_loaded']['p50_ms']:.1f} / p99 {t['canary_loaded']['p99_ms']:.1f} / max "
                 f"{t['canary_loaded']['max_ms']:.1f} ms; of its gaps over 2× the quiet max ({a.get('n', 0)}), "
                 f"{a.get('descheduled_step', 0)} had a step whose wall time was over 1.5× its CPU time (waiting for a "
                 f"core), {a.get('prefill_in_gap', 0)} a prefill in the gap, {a.get('gc_over_5ms', 0)} a GC over 5 ms, "
                 f"{a.get('loop_lag_over_10ms', 0)} a gateway loop lag over 10 ms; steps the canary's tokens came "
                 f"from p50 {L['step_ms']['p50']} / max {L['step_ms']['max']} ms "
                 f"(quiet p50 {L['quiet_step_ms']['p50']}), "
                 f"loop lag p50 {L['loop_lag_ms']['p50']} / max {L['loop_lag_ms']['max']} ms, CPU seconds "
                 f"{t['cpu_s']}, load average {[round(x, 1) for x in t['load_avg']]}.")
text = doc.read_text()
if "\nFIGURES\n" not in text:
    sys.exit("no FIGURES line in " + str(doc))
doc.write_text(text.replace("\nFIGURES\n", "\n" + "\n".join(lines) + "\n", 1))
print("\n".join(lines))
