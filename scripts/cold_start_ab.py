"""Cold start A/B on a shared box: servers of each variant started in turn, round after round (so a drift in
load hits every variant alike), and the medians of Popen -> listening / ready / first token per variant, and of
the server's memory after its first requests (RSS and PSS over its processes, the gateway's own RSS).

    python scripts/cold_start_ab.py --rounds 3 thread=thread process-before=process@/tmp/before \\
        process-after=process

A variant is LABEL=ENGINE_MODE[@SOURCE_TREE] (no tree: the tree of the seedance this script imports). The
servers run from a temporary directory: `python -m` puts its working directory first on sys.path, so a server
started from a checkout would import that checkout's seedance whatever tree its variant names.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import seedance
from seedance.bench.cold_start import one_run

MEASURES = ("listening_s", "ready_s", "first_token_s")
MEMORY = ("rss", "pss", "gateway_rss")  # MiB
KEYS = (*MEASURES, *(f"{k}_mib" for k in MEMORY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("variants", nargs="+", metavar="LABEL=MODE[@TREE]")
    args = parser.parse_args()
    variants = []
    for spec in args.variants:
        label, _, rest = spec.partition("=")
        mode, _, tree = rest.partition("@")
        variants.append((label, mode, tree or str(Path(seedance.__file__).resolve().parent.parent)))
    results: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="seedance-cold-ab-") as tmp:
        os.chdir(tmp)  # no seedance package in the servers' working directory (see above)
        for i in range(args.rounds):
            for label, mode, tree in variants:
                full = one_run("model", True, 0.0, 8, Path(tmp) / f"{label}-{i}", mode, tree)
                run = {**full["client"], **{f"{k}_mib": full["memory_mib"][k] for k in MEMORY}}
                results[label].append(run)
                print(f"round {i + 1} {label}: " + ", ".join(f"{k} {run[k]:.2f}" for k in KEYS), flush=True)
    print(f"load average after: {os.getloadavg()}")
    for label, runs in results.items():
        print(f"{label} medians ({len(runs)} runs): "
              + ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in KEYS))


if __name__ == "__main__":
    main()
