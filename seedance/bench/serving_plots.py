"""Plots for `seedance bench serving` (matplotlib, the optional `bench` extra): one line per report (server), so
runs against Seedance, vLLM and llama-server saved as JSON can be drawn side by side."""

from __future__ import annotations

from pathlib import Path

from seedance.bench.plots import _pyplot, _save, _style


def _nan(row: dict) -> dict:
    """None (a level where nothing completed) as NaN: a gap in the line."""
    fix = {key: {k: float("nan") if v is None else v for k, v in row[key].items()} for key in ("ttft_ms", "itl_ms")}
    return {**row, **fix}


def write_serving_plots(reports: list[dict], out_dir: Path) -> list[str]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for report in reports:
        rows = [r for r in report["results"] if r["concurrency"] is not None]
        if not rows:
            rows = report["results"]
        rows = [_nan(r) for r in rows]
        xs = [r["concurrency"] if r["concurrency"] is not None else r["rate"] for r in rows]
        label = report["label"]
        (line,) = axes[0].plot(xs, [r["output_tok_s"] for r in rows], "o-", label=label)
        color = line.get_color()
        axes[1].plot(xs, [r["ttft_ms"]["p50"] for r in rows], "o-", color=color, label=f"{label} p50")
        axes[1].plot(xs, [r["ttft_ms"]["p99"] for r in rows], "s--", color=color, alpha=0.6, label=f"{label} p99")
        axes[2].plot(xs, [r["itl_ms"]["p50"] for r in rows], "o-", color=color, label=f"{label} p50")
        axes[2].plot(xs, [r["itl_ms"]["p99"] for r in rows], "s--", color=color, alpha=0.6, label=f"{label} p99")
    closed = any(r["concurrency"] is not None for rep in reports for r in rep["results"])
    xlabel = "concurrent requests" if closed else "request rate (req/s)"
    for ax, ylabel in zip(axes, ("output tokens/s", "TTFT (ms)", "inter-token latency (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        _style(ax, xlabel, ylabel)
    if any(r["ttft_ms"]["p50"] for rep in reports for r in rep["results"]):  # log of nothing fails
        axes[1].set_yscale("log")
    fig.suptitle("seedance bench serving")
    _save(fig, out_dir / "serving.png", written)
    return written
