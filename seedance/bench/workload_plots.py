"""PNG plots for `seedance bench workloads` (matplotlib, the optional `bench` extra).

A 3-D scatter per workload (latency, memory, completion rate) shows the whole trade-off; the 2-D companion
(latency vs memory, completion as colour and size) is the one that stays readable on paper.
"""

from __future__ import annotations

from pathlib import Path

FRONT = "tab:red"
OTHER = "tab:gray"


def _cells(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for w in report["workloads"]:
        rows = [r for r in report["results"] if r["workload"] == w["name"]]
        if rows:
            out[w["name"]] = rows
    return out


def _latency(row: dict) -> float | None:
    return row["latency_ms"]["p99"]


def write_plots(report: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    out_dir.mkdir(parents=True, exist_ok=True)
    cells = _cells(report)
    written: list[str] = []
    n = max(1, len(cells))
    deadline_ms = report["settings"]["deadline_s"] * 1000.0

    fig = plt.figure(figsize=(5.6 * n, 5.4))
    for k, (workload, rows) in enumerate(cells.items()):
        ax = fig.add_subplot(1, n, k + 1, projection="3d")
        for r in rows:
            lat = _latency(r)
            if lat is None:  # nothing completed: no latency; drawn at the deadline, as a cross
                lat, marker = deadline_ms, "x"
            else:
                marker = "*" if r.get("pareto") else "o"
            color = FRONT if r.get("pareto") else OTHER
            rss = r["server"]["rss_mib_max"] or 0
            ax.plot([lat, lat], [rss, rss], [0, r["completion_pct"]], color=color, alpha=0.35, linewidth=0.8)
            ax.scatter([lat], [r["server"]["rss_mib_max"] or 0], [r["completion_pct"]], c=color, marker=marker,
                       s=160 if r.get("pareto") else 40, depthshade=False, edgecolors="black", linewidths=0.5)
            ax.text(lat, r["server"]["rss_mib_max"] or 0, r["completion_pct"], f" {r['config']}", fontsize=7,
                    color="black" if r.get("pareto") else "dimgray", weight="bold" if r.get("pareto") else None)
        ax.set_xlabel("p99 latency (ms)")
        ax.set_ylabel("peak server RSS (MiB)")
        ax.set_zlabel("completion (%)")
        ax.set_zlim(0, 105)
        front = ", ".join(r["config"] for r in rows if r.get("pareto")) or "none"
        ax.set_title(f"{workload}\n★ Pareto-optimal: {front}", fontsize=10, pad=0)
        ax.view_init(elev=22, azim=-58)
    fig.suptitle("Workload matrix: p99 latency × peak RSS × completion rate (better: less latency, less memory, "
                 "more completion)", y=0.99)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = out_dir / "workloads-pareto-3d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

    fig, axes = plt.subplots(1, n, figsize=(5.4 * n, 4.6), squeeze=False)
    scatter = None
    for ax, (workload, rows) in zip(axes[0], cells.items(), strict=False):
        ok = [r for r in rows if _latency(r) is not None]
        front = sorted((r for r in ok if r.get("pareto")), key=_latency)
        scatter = ax.scatter([_latency(r) for r in ok], [r["server"]["rss_mib_max"] for r in ok],
                             c=[r["completion_pct"] for r in ok], cmap="RdYlGn", vmin=0, vmax=100,
                             s=[30 + 2.2 * r["completion_pct"] for r in ok], edgecolors="black", linewidths=0.5)
        if front:
            ax.scatter([_latency(r) for r in front], [r["server"]["rss_mib_max"] for r in front], marker="*",
                       s=60, c=FRONT, zorder=3, label="Pareto-optimal")
        # Labels of neighbours (configs of equal pool size sit on top of each other) go above and below in turn.
        for k, r in enumerate(sorted(ok, key=lambda r: (r["server"]["rss_mib_max"], _latency(r)))):
            ax.annotate(r["config"], (_latency(r), r["server"]["rss_mib_max"]), fontsize=7,
                        xytext=(6, 5 if k % 2 == 0 else -11), textcoords="offset points",
                        weight="bold" if r.get("pareto") else None)
        for r in rows:
            if _latency(r) is None:
                ax.annotate(f"{r['config']}: nothing completed", (0.02, 0.02), xycoords="axes fraction", fontsize=7)
        lats = [_latency(r) for r in ok]
        if lats and max(lats) > 10 * min(lats):  # timeouts next to fast cells: only a log axis shows both
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.margins(x=0.15, y=0.1)
        ax.set_xlabel("p99 latency (ms)")
        ax.set_ylabel("peak server RSS (MiB)")
        ax.set_title(workload)
        ax.grid(alpha=0.3, which="both")
        if front:
            ax.legend(loc="best", fontsize=7)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes[0].tolist(), label="completion rate (%) (also marker size)", shrink=0.85)
    fig.suptitle("Latency vs memory per workload; colour and size: completion rate; ★ Pareto-optimal in 3-D")
    path = out_dir / "workloads-pareto-2d.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(str(path))
    return written
