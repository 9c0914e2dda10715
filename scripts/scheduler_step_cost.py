"""What one `Scheduler.schedule()` costs, this checkout against a base commit's scheduler, interleaved.

Plain data, no model: 96 requests from CLIENTS clients (64 decode in the batch, the rest wait), a
max_running_per_client share of 16; each round times STEPS schedule-and-complete steps per variant, alternating,
and prints the medians (µs per step, and per running sequence, since a work-conserving share may run more):

    python scripts/scheduler_step_cost.py --base 02e9440 --clients 4 --clients 2 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seedance.engine.block_manager import BlockManager  # noqa: E402
from seedance.engine.scheduler import Scheduler  # noqa: E402
from tests.engine.helpers import complete_step, make_seq  # noqa: E402


def base_scheduler(rev: str) -> type:
    """The Scheduler class of scheduler.py at rev (it imports the rest from this checkout)."""
    source = subprocess.run(["git", "show", f"{rev}:seedance/engine/scheduler.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "base_scheduler.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("base_scheduler", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Scheduler


def step_cost(cls: type, clients: int, steps: int) -> tuple[float, int]:
    """µs per step in steady decoding, and how many sequences ran."""
    sch = cls(BlockManager(8192, 16), 64, 256, 2.0, max_running_per_client=16)
    for i in range(96):
        seq = make_seq(f"r{i}", 20, max_tokens=10**6, first_token=i * 50)
        seq.client = f"c{i % clients}"
        sch.add(seq)
    for _ in range(5):  # prefilled, decoding
        complete_step(sch.schedule(0.0))
    start = time.perf_counter()
    for _ in range(steps):
        complete_step(sch.schedule(0.0))
    return (time.perf_counter() - start) / steps * 1e6, len(sch.running)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit whose scheduler.py is the baseline")
    ap.add_argument("--clients", type=int, action="append", help="clients sharing the 96 requests (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2000)
    args = ap.parse_args()
    variants = {"base": base_scheduler(args.base), "new": Scheduler}
    for clients in args.clients or [4, 2]:
        times: dict[str, list[float]] = {name: [] for name in variants}
        running: dict[str, int] = {}
        for _ in range(args.rounds):
            for name, cls in variants.items():
                us, running[name] = step_cost(cls, clients, args.steps)
                times[name].append(us)
        for name in variants:
            us = statistics.median(times[name])
            print(f"clients={clients} {name}: {us:.0f} µs/step, {running[name]} running, "
                  f"{us / running[name]:.1f} µs per running sequence")


if __name__ == "__main__":
    main()
