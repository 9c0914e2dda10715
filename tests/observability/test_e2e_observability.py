"""A real server with tracing to a file and JSON logs: a WebSocket generate and an SSE completion, then
/metrics, the trace file (request spans and the cold-start trace), /stats' cold-start marks and the log lines."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from seedance.observability.tracing import COLD_START_MARKS, COLD_START_PHASES
from tests.e2e.conftest import server_factory  # noqa: F401 (fixture)


def scrape(srv) -> dict[tuple[str, tuple], float]:
    body = httpx.get(f"{srv.http}/metrics", timeout=10)
    assert body.status_code == 200
    assert body.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_traces_and_json_logs(server_factory, tmp_path):  # noqa: F811
    traces = tmp_path / "traces.jsonl"
    srv = server_factory(tracing="file", tracing_file=str(traces), trace_sample_rate=1.0, log_format="json")
    # Ready, but no client yet: /stats shows the marks so far (the readiness probes are not clients).
    early = srv.stats()["cold_start_ms"]
    assert "engine_ready" in early and "first_connection" not in early and "first_token" not in early
    async with connect(srv.ws) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "a", "prompt": "In the beginning", "max_tokens": 8,
                                  "ignore_eos": True}))
        done = None
        while done is None:
            for m in (lambda x: x if isinstance(x, list) else [x])(json.loads(await ws.recv())):
                if m["type"] == "done":
                    done = m
    assert done["finish_reason"] == "length"
    r = httpx.post(f"{srv.http}/v1/completions", timeout=60, json={
        "model": "seedance-tiny", "prompt": "And God said", "max_tokens": 6, "stream": True, "ignore_eos": True})
    assert r.status_code == 200 and "data: [DONE]" in r.text
    sse_id = json.loads(r.text.split("data: ", 2)[1].split("\n", 1)[0])["id"]
    # Refused HTTP generates are traced like refused WebSocket ones; the reply names the trace's request id.
    refused = {}
    for transport, path in (("sse", "/v1/completions"), ("polling", "/v1/jobs")):
        bad = httpx.post(f"{srv.http}{path}", timeout=10, json={"prompt": "x", "temperature": "hot"})
        assert bad.status_code == 400
        refused[bad.headers["X-Request-Id"]] = transport

    samples = scrape(srv)
    assert value(samples, "seedance_requests_total", transport="ws", outcome="length") >= 1
    assert value(samples, "seedance_requests_total", transport="sse", outcome="length") >= 1
    assert value(samples, "seedance_ttft_seconds_count", transport="ws") >= 1
    assert value(samples, "seedance_ttft_seconds_count", transport="sse") >= 1
    assert value(samples, "seedance_inter_token_seconds_count", transport="ws") >= 1
    assert value(samples, "seedance_completion_tokens_total", transport="ws") >= 8
    assert value(samples, "seedance_active_connections", transport="ws") == 0
    assert ("seedance_engine_running_requests", ()) in samples
    assert value(samples, "seedance_prefix_cache_query_tokens_total") > 0
    stats = srv.stats()
    free = value(samples, "seedance_kv_blocks", state="free")
    used = value(samples, "seedance_kv_blocks", state="used")
    assert free + used == stats["num_kv_blocks"] == value(samples, "seedance_kv_blocks_capacity")
    assert value(samples, "seedance_kv_blocks", state="pinned") == stats["num_pinned_blocks"]
    assert ("seedance_heartbeat_timeouts_total", ()) in samples
    assert ("seedance_snapshot_writes_total", ()) in samples

    spans = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spans = [json.loads(line) for line in traces.read_text().splitlines()] if traces.exists() else []
        if sum(s["name"] == "seedance.request" for s in spans) >= 4:
            break
        time.sleep(0.1)
    kept_refusals = {s["attributes"]["seedance.request_id"]: s for s in spans if s["name"] == "seedance.request"
                     and s["attributes"].get("seedance.finish_reason") == "refused"}
    assert set(kept_refusals) == set(refused)
    for request_id, transport in refused.items():
        assert kept_refusals[request_id]["attributes"]["seedance.transport"] == transport
        assert kept_refusals[request_id]["status"]["status_code"] == "ERROR"
    roots = {s["attributes"]["seedance.transport"]: s for s in spans if s["name"] == "seedance.request"
             and s["attributes"]["seedance.request_id"] not in refused}
    assert set(roots) >= {"ws", "sse"}
    ws_root = roots["ws"]
    assert ws_root["attributes"]["seedance.finish_reason"] == "length"
    assert ws_root["attributes"]["seedance.completion_tokens"] == 8
    children = {s["name"] for s in spans if s["parent_id"] == ws_root["context"]["span_id"]}
    assert {"queue", "prefill", "decode", "send"} <= children
    assert roots["sse"]["attributes"]["seedance.request_id"] == sse_id
    cold = [s for s in spans if s["name"] == "seedance.cold_start"]
    assert len(cold) == 1
    by_name = {s["name"]: s for s in spans if s["context"]["trace_id"] == cold[0]["context"]["trace_id"]}
    assert set(by_name) == {"seedance.cold_start"} | {p[0] for p in COLD_START_PHASES}
    for name, parent, _starts, _end in COLD_START_PHASES:
        want = by_name[parent or "seedance.cold_start"]["context"]["span_id"]
        assert by_name[name]["parent_id"] == want, name

    # The same marks without tracing: /stats, ms since process start, every phase in order.
    marks = srv.stats()["cold_start_ms"]
    assert set(marks) == set(COLD_START_MARKS)
    assert marks["process_start"] == 0
    order = ["process_start", "app_built", "listener_ready"]
    assert [marks[k] for k in order] == sorted(marks[k] for k in order)
    order = ["engine_load_start", "config_loaded", "weights_loaded", "model_loaded", "kv_allocated",
             "warmup_done", "engine_ready", "first_connection", "first_token"]
    assert [marks[k] for k in order] == sorted(marks[k] for k in order), marks
    # the thread mode starts loading once the app is built; the process mode (the default) spawned its engine
    # process before building the app
    before, after = ("app_built", "engine_load_start")[::1 if srv.stats()["engine_mode"] == "thread" else -1]
    assert marks[before] <= marks[after], marks
    assert marks["engine_ready"] > marks["app_built"] > 0 and marks["first_token"] < 600_000
    assert cold[0]["attributes"]["seedance.first_token_ms"] == marks["first_token"]

    lines = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    assert lines and all({"timestamp", "level", "logger", "message"} <= set(entry) for entry in lines)
    assert any(entry.get("request_id") == sse_id for entry in lines), lines[-10:]
