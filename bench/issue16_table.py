"""Print issue #16's matrix (markdown) from the JSON files bench/issue16_matrix.sh or bench/chunkcost_window.sh
writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")


def load(name: str) -> dict | None:
    """issue16-NAME.json (bench/issue16_matrix.sh) or NAME.json (bench/chunkcost_window.sh)."""
    for path in (OUT / f"issue16-{name}.json", OUT / f"{name}.json"):
        if path.exists():
            return json.loads(path.read_text())
    return None


def rows(report: dict | None, label: str, key: str = "results") -> list[tuple[str, dict]]:
    return [(label if key == "results" else "picows baseline", r) for r in (report or {}).get(key, [])]


def f(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)


LEGS = [("before-ws", "before"), ("before-synth-ws", "before + synthetic fix"),
        ("after-ws-thread", "after, --engine thread"), ("after-ws-process", "after, --engine process"),
        ("after-ws", "after, --engine process"), ("after-ws-10k", "after, --engine process"),
        ("after-ws-workers2", "after, --workers 2"),
        ("after-ws-aiohttp", "after, --engine process --ws-stack aiohttp"),
        ("after-k2-ws", "after, max_steps_ahead 2"), ("after-ws-run2", "after, run 2"),
        ("before-ws-run2", "before, run 2")]
table = [r for name, label in LEGS for r in rows(load(name), label)]
table += [*rows(load("after-ws-process"), "", key="baseline"), *rows(load("after-ws"), "", key="baseline"),
          *rows(load("after-http"), "after, --engine process")]
print("| server | transport | clients | chunks/s | server CPU s | CPU µs/chunk | gateway / engine µs/chunk | "
      "tokens/chunk | CPU µs/token | gateway µs/token | gateway system % | chunks/CPU-s | failures (err / t-o / "
      "never connected) | all connected after | handshakes/s peak | TTFT p99 ms | inter-chunk p99 ms |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for label, r in table:
    srv, conn = r["server"], r["connections"]
    print(f"| {label} | {r['transport']} | {r['clients']:,} | {f(r['chunks_per_s'])} | "
          f"{f(srv.get('cpu_s'), '{:.1f}')} | "
          f"{f(srv.get('cpu_us_per_chunk'), '{:.1f}')} | {f(srv.get('gateway_cpu_us_per_chunk'), '{:.1f}')} / "
          f"{f(srv.get('engine_cpu_us_per_chunk'), '{:.1f}')} | {f(r.get('tokens_per_chunk'), '{:.2f}')} | "
          f"{f(srv.get('cpu_us_per_token'), '{:.1f}')} | {f(srv.get('gateway_cpu_us_per_token'), '{:.1f}')} | "
          f"{f(100 * srv['gateway_system_share'] if srv.get('gateway_system_share') is not None else None)} | "
          f"{f(srv.get('chunks_per_cpu_s'))} | {r['failures']} "
          f"({r['errors']} / {r['timeouts']} / {r['never_connected']}) | "
          f"{f(conn['time_to_all_connected_s'], '{:.1f} s')} | {conn['handshakes_per_s_peak']:,} | "
          f"{f(r['ttft_ms']['p99'])} | {f(r['inter_chunk_ms']['p99'])} |")
for name in ("after-ws-process", "after-ws", "after-ws-aiohttp", "model-process", "model-thread"):
    report = load(name)
    for ratio in (report or {}).get("ratios", []):
        print(name, ratio)
    if report and "memory" in report:
        print(name, "memory", {k: v for k, v in report["memory"].items() if "kib" in k or "mib" in k})
    for r in (report or {}).get("engine_alone", []):
        print(name, "engine alone", r)
    if report and name.startswith("model"):
        for r in report["results"]:
            print(name, r["transport"], r["clients"], "tokens/s", round(r["tokens_per_s"]), "chunks/s",
                  round(r["chunks_per_s"]))

# The goals, level by level, for every "after" configuration.
base = {r["clients"]: r for r in (load("after-ws-process") or load("after-ws") or {}).get("baseline", [])}
http = {(r["transport"], r["clients"]): r for r in (load("after-http") or {}).get("results", [])}
for name in ("after-ws-process", "after-ws", "after-ws-10k", "after-ws-aiohttp", "after-ws-thread", "after-ws-workers2",
             "before-ws", "before-synth-ws"):
    for r in (load(name) or {}).get("results", []):
        c, srv = r["clients"], r["server"]
        parts = [f"{name} {c}:"]
        if c in base and srv.get("cpu_us_per_chunk") and base[c]["server"].get("cpu_us_per_chunk"):
            parts.append(f"CPU/chunk {srv['cpu_us_per_chunk'] / base[c]['server']['cpu_us_per_chunk']:.2f}x picows")
            if srv.get("gateway_cpu_us_per_token") and base[c]["server"].get("cpu_us_per_token"):
                parts.append(f"gateway CPU/token "
                             f"{srv['gateway_cpu_us_per_token'] / base[c]['server']['cpu_us_per_token']:.2f}x picows")
        for t in ("sse", "polling"):
            o = http.get((t, c))
            if o and o["server"].get("chunks_per_cpu_s") and srv.get("chunks_per_cpu_s"):
                parts.append(f"chunks/CPU-s {srv['chunks_per_cpu_s'] / o['server']['chunks_per_cpu_s']:.2f}x {t}")
        parts.append(f"failures {r['failures']}, never connected {r['never_connected']}, "
                     f"handshakes/s peak {r['connections']['handshakes_per_s_peak']}")
        print(" ".join(parts))
