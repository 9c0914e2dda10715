"""PNG plots for `seedance bench transports` (matplotlib, the optional `bench` extra)."""

from __future__ import annotations

from pathlib import Path

COLORS = {"polling": "tab:orange", "sse": "tab:blue", "websocket": "tab:green"}


def write_plots(report: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    rows = report["results"]
    transports = list(dict.fromkeys(r["transport"] for r in rows))
    backend = report["settings"]["backend"]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for t in transports:
        rs = sorted((r for r in rows if r["transport"] == t), key=lambda r: r["clients"])
        xs = [r["clients"] for r in rs]
        axes[0].plot(xs, [r["requests_per_s"] for r in rs], "o-", label=t, color=COLORS.get(t))
        axes[1].plot(xs, [r["chunks_per_s"] for r in rs], "o-", label=t, color=COLORS.get(t))
    for ax, label in zip(axes, ("completed requests/s", "delivered chunks/s"), strict=True):
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Throughput vs concurrency ({backend} backend)")
    fig.tight_layout()
    path = out_dir / "transports-throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

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
        ax.set_xlabel(label)
        ax.set_ylabel("fraction ≤ x")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Latency CDFs at {top} clients ({backend} backend)")
    fig.tight_layout()
    path = out_dir / "transports-latency-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(str(path))

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
        fig.tight_layout()
        path = out_dir / "transports-memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written
