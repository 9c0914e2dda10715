"""PNG plots for the benchmarks (matplotlib, the optional `bench` extra): `seedance bench transports`'
throughput / latency / memory figures and `seedance bench cold-start`'s waterfall."""

from __future__ import annotations

from pathlib import Path

PLOTS_SKIPPED = ('plots skipped: matplotlib is not installed (pip install "seedance[bench]", or in a checkout '
                 'pip install -e ".[bench]")')
COLORS = {"polling": "tab:orange", "sse": "tab:blue", "websocket": "tab:green"}


def have_matplotlib() -> bool:
    """Plots are optional (the `bench` extra): a benchmark run without matplotlib skips them, never crashes."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def can_plot(console) -> bool:
    """have_matplotlib(), saying so on the console when not. markup=False: rich would take "[bench]" for a tag."""
    if have_matplotlib():
        return True
    if console is not None:
        console.print(PLOTS_SKIPPED, style="yellow", markup=False)
    return False


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _style(ax, xlabel: str, ylabel: str, legend: bool = True) -> None:
    """The axis set-up every line plot here shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend()


def _save(fig, path: Path, written: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    written.append(str(path))


def write_plots(report: dict, out_dir: Path) -> list[str]:
    import numpy as np

    plt = _pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    rows = report["results"]
    transports = list(dict.fromkeys(r["transport"] for r in rows))
    backend = report["settings"]["backend"]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    levels = sorted({r["clients"] for r in rows})
    for t in transports:
        rs = sorted((r for r in rows if r["transport"] == t), key=lambda r: r["clients"])
        xs = [r["clients"] for r in rs]
        axes[0].plot(xs, [r["requests_per_s"] for r in rs], "o-", label=t, color=COLORS.get(t))
        axes[1].plot(xs, [r["chunks_per_s"] for r in rs], "o-", label=t, color=COLORS.get(t))
        axes[2].plot(xs, [r["ttft_ms"]["p99"] for r in rs], "o-", label=f"{t} TTFT", color=COLORS.get(t))
        axes[2].plot(xs, [r["inter_chunk_ms"]["p99"] for r in rs], "s--", label=f"{t} inter-chunk",
                     color=COLORS.get(t), alpha=0.6)
    axes[2].set_yscale("log")
    for ax, label in zip(axes, ("completed requests/s", "delivered chunks/s", "p99 latency (ms)"), strict=True):
        if levels[-1] >= 10 * levels[0]:  # 1,000 … 10,000: equal room per level
            ax.set_xscale("log")
            ax.set_xticks(levels, [f"{n:,}" for n in levels])
            ax.minorticks_off()
        _style(ax, "concurrent clients", label)
    fig.suptitle(f"Throughput vs concurrency ({backend} backend)")
    _save(fig, out_dir / "transports-throughput.png", written)

    top = max(r["clients"] for r in rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    q = np.linspace(0, 1, 101)
    for r in rows:
        if r["clients"] != top:
            continue
        for ax, key in zip(axes, ("ttft_ms", "inter_chunk_ms"), strict=True):
            cdf = r[key]["cdf_ms"]
            if cdf:
                ax.plot(cdf, q[: len(cdf)], label=r["transport"], color=COLORS.get(r["transport"]))
    for ax, label in zip(axes, ("time to first token (ms)", "inter-chunk gap (ms)"), strict=True):
        ax.set_xscale("symlog", linthresh=1.0)
        _style(ax, label, "fraction ≤ x")
    fig.suptitle(f"Latency CDFs at {top} clients ({backend} backend)")
    _save(fig, out_dir / "transports-latency-cdf.png", written)

    mem = report.get("memory")
    if mem and mem.get("rss_per_idle_connection_kib") is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = ["idle WebSocket", "streaming WebSocket"]
        values = [mem["rss_per_idle_connection_kib"], mem["rss_per_streaming_connection_kib"]]
        ax.bar(labels, values, color=["tab:gray", "tab:green"])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f} KiB", ha="center", va="bottom")
        ax.set_ylabel("server RSS per connection (KiB)")
        ax.set_title(f"Memory per connection ({mem['connections']} connections)")
        _save(fig, out_dir / "transports-memory.png", written)
    return written


def write_waterfall(phases: list[dict], path: Path, title: str, markers: dict[str, float] | None = None) -> str:
    """The cold-start waterfall: one horizontal bar per phase, from its mean offset since process start and its
    mean length long, the standard deviation of its length as an error bar and both as its label. Phases that
    others split (model_load, engine_start) are pale and hatched, their parts marked └ below them.
    markers: label -> ms, drawn as dashed vertical lines (what the client saw)."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [p for p in phases if p["n"]]
    groups = {p["parent"] for p in rows if p["parent"]}
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    end_max = max([p["end_ms"]["mean"] + p["duration_ms"]["std"] for p in rows] + list((markers or {}).values()),
                  default=1.0)
    for y, p in enumerate(rows):
        start, length, std = p["start_ms"]["mean"], p["duration_ms"]["mean"], p["duration_ms"]["std"]
        group = p["phase"] in groups
        ax.barh(y, max(length, end_max * 0.002), left=start, height=0.6, color="tab:blue",
                alpha=0.25 if group else 0.85, hatch="//" if group else None, edgecolor="tab:blue")
        ax.errorbar(start + length, y, xerr=std, fmt="none", ecolor="black", capsize=3, lw=1)
        ax.text(start + length + std + end_max * 0.01, y, f"{length:.0f} ± {std:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [("└ " if p["parent"] else "") + p["phase"] for p in rows])
    ax.invert_yaxis()  # process start at the top
    for i, (label, ms) in enumerate((markers or {}).items()):
        ax.axvline(ms, ls="--", lw=1, color=f"C{i + 1}", label=f"{label}: {ms:.0f} ms")
    ax.set_xlim(0, end_max * 1.2)
    _style(ax, "ms since process start (mean of the runs; error bar: std of the phase's length)", "", legend=False)
    if markers:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    written: list[str] = []
    _save(fig, path, written)
    return written[0]
