"""Terminal tables for `seedance bench transports`."""

from __future__ import annotations


def _f(value, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _pair(srv: dict, key: str) -> str:
    """The gateway's and the engine's share of one per-chunk or per-token cost."""
    return f"{_f(srv.get(f'gateway_{key}'))} / {_f(srv.get(f'engine_{key}'))}"


def render(console, report: dict) -> None:
    from rich.table import Table

    table = Table(title="Transports: same closed-loop streaming workload "
                  f"({report['settings']['max_tokens']} tokens/request, {report['settings']['duration_s']:g} s/level)")
    for col in ("transport", "clients", "req/s", "chunks/s", "TTFT p50/p90/p99/p99.9 ms",
                "inter-chunk p50/p90/p99/p99.9 ms", "err", "t/o", "server CPU% mean/max", "load CPU%",
                "box CPU%", "RSS MiB"):
        table.add_column(col, justify="right")
    for r in report["results"]:
        lat = [" / ".join(_f(r[key][p]) for p in ("p50", "p90", "p99", "p99.9")) for key in ("ttft_ms",
                                                                                             "inter_chunk_ms")]
        srv = r["server"]
        table.add_row(r["transport"], str(r["clients"]), f"{r['requests_per_s']:.1f}", f"{r['chunks_per_s']:.0f}",
                      lat[0], lat[1], str(r["errors"]), str(r["timeouts"]),
                      f"{_f(srv['cpu_percent_mean'], '{:.0f}')} / {_f(srv['cpu_percent_max'], '{:.0f}')}",
                      _f(srv.get("loadgen_cpu_percent_mean"), "{:.0f}"), _f(srv.get("machine_cpu_percent_mean"),
                                                                             "{:.0f}"),
                      _f(srv["rss_mib_max"], "{:.0f}"))
    console.print(table)
    cost = Table(title="Connections and server cost (server CPU: its whole process tree, measured window; "
                 "gw = the gateway process(es), eng = the engine process)")
    for col in ("server", "transport", "clients", "chunks/s", "failures", "never connected", "all connected s",
                "handshakes/s peak", "handshake p50/p99 ms", "CPU s", "CPU µs/chunk", "chunks/CPU-s",
                "gw / eng µs/chunk", "tokens/chunk", "CPU µs/token", "gw / eng µs/token", "gw sys %"):
        cost.add_column(col, justify="right", no_wrap=col == "server")
    for r in [*report["results"], *report.get("baseline", [])]:
        conn, srv = r["connections"], r["server"]
        hs = conn["handshake_ms"]
        cost.add_row(r.get("server_kind", "seedance"), r["transport"], str(r["clients"]), f"{r['chunks_per_s']:.0f}",
                     str(r["failures"]), str(r["never_connected"]), _f(conn["time_to_all_connected_s"]),
                     str(conn["handshakes_per_s_peak"]),
                     f"{_f(hs['p50'], '{:.0f}')} / {_f(hs['p99'], '{:.0f}')}" if hs else "-",
                     _f(srv.get("cpu_s")), _f(srv.get("cpu_us_per_chunk")), _f(srv.get("chunks_per_cpu_s"), "{:.0f}"),
                     _pair(srv, "cpu_us_per_chunk"), _f(r.get("tokens_per_chunk"), "{:.2f}"),
                     _f(srv.get("cpu_us_per_token")), _pair(srv, "cpu_us_per_token"),
                     _f(100 * srv["gateway_system_share"] if srv.get("gateway_system_share") is not None else None,
                        "{:.0f}"))
    console.print(cost)
    for row in report.get("ratios", []):
        parts = [f"{k.replace('_', ' ')} {v:.2f}x" for k, v in row.items() if k != "clients"]
        if parts:
            console.print(f"ratios at {row['clients']} clients: " + "; ".join(parts))
    for alone in report.get("engine_alone", []):
        console.print(f"engine alone (in-process, no server), {alone['clients']} streams: "
                      f"{alone['tokens_per_s']:.0f} tokens/s")
    for transport, knee in report.get("knee", {}).items():
        where = f"{knee['clients']} clients" if knee["clients"] is not None else "below the lowest level"
        console.print(f"knee {transport}: {where} ({knee['reason']})")
    if cold := report.get("cold_start"):
        console.print("cold start: listening {:.2f} s, ready {:.2f} s, first token {:.2f} s after process start"
                      .format(cold["process_start_to_listening_s"], cold["process_start_to_ready_s"],
                              cold["process_start_to_first_token_s"]))
    if mem := report.get("memory"):
        console.print(
            f"memory: idle {_f(mem.get('rss_idle_mib'))} MiB; {mem['connections']} idle WebSockets "
            f"{_f(mem.get('rss_idle_connections_mib'))} MiB ({_f(mem.get('rss_per_idle_connection_kib'))} KiB each); "
            f"streaming {_f(mem.get('rss_streaming_mib'))} MiB ({_f(mem.get('rss_per_streaming_connection_kib'))} "
            f"KiB each); KV blocks in use {mem['kv_blocks_in_use']}/{mem['kv_blocks_total']}; prefix-cache hit "
            f"rate {mem['prefix_cache_hit_rate']:.0%}")
    wrk = report.get("wrk") or {}
    if "error" in wrk:
        console.print(f"wrk cross-check: {wrk['error']}")
    for transport, pair in wrk.items():
        if transport == "error":
            continue
        w, o = pair["wrk"], pair["seedance_loadgen"]
        if "error" in w:
            console.print(f"wrk failed on {transport}: {w['error']}")
            continue
        lat = w["latency_ms"]
        console.print(f"{transport} at {w['clients']} clients: wrk {w['requests_per_s']:.1f} completed req/s "
                      f"({w['http_requests_per_s']:.0f} HTTP req/s; latency {w['latency_is']}: p50/p99 "
                      f"{lat['p50']:.0f}/{lat['p99']:.0f} ms; {w['socket_errors']} socket errors, "
                      f"{w['status_errors']} non-2xx) vs seedance loadgen {o['requests_per_s']:.1f} req/s "
                      f"({o['errors']} errors)")
