"""The metrics registry after simulated transport and engine events, and /metrics under the security model."""

from __future__ import annotations

from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from seedance.engine.events import FinishReason, TokenEvent
from seedance.engine.llm_engine import EngineStats
from seedance.observability.hub import Observability
from seedance.observability.metrics import Metrics
from seedance.server.http.config import ServerConfig
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def fake_state():
    stats = EngineStats(num_waiting=3, num_running=2, num_paused=1, num_free_blocks=70, num_kv_blocks=100,
                        prefix_cache_query_tokens=500, prefix_cache_hit_tokens=200, num_preemptions=4,
                        num_pinned_blocks=5, steps=11, generated_tokens=42)
    waiting = [SimpleNamespace(priority=p) for p in (0, 0, 5)]
    engine = SimpleNamespace(stats=lambda: stats, engine=SimpleNamespace(scheduler=SimpleNamespace(waiting=waiting)),
                             last_step_started=None)
    sessions = SimpleNamespace(snapshots_written=7, sessions={"a": 1})
    return SimpleNamespace(engine=engine, sessions=sessions)


def final(reason: FinishReason, prompt: int = 10, cached: int = 0) -> TokenEvent:
    return TokenEvent("r", 0, 1, "", finish_reason=reason, num_prompt_tokens=prompt, num_cached_tokens=cached)


def test_families_exist_before_any_request():
    samples = samples_of(Metrics().render().decode())
    for transport in ("ws", "sse", "polling"):
        assert value(samples, "seedance_active_connections", transport=transport) == 0
        assert value(samples, "seedance_ttft_seconds_count", transport=transport) == 0
    assert value(samples, "seedance_heartbeat_timeouts_total") == 0


def test_engine_collector_reads_stats_at_scrape_time():
    state = fake_state()
    samples = samples_of(Metrics(lambda: state).render().decode())
    assert value(samples, "seedance_engine_waiting_requests", priority="0") == 2
    assert value(samples, "seedance_engine_waiting_requests", priority="5") == 1
    assert value(samples, "seedance_engine_running_requests") == 2
    assert value(samples, "seedance_engine_paused_requests") == 1
    assert value(samples, "seedance_kv_blocks", state="used") == 30
    assert value(samples, "seedance_kv_blocks", state="free") == 70
    assert value(samples, "seedance_kv_blocks", state="pinned") == 5
    assert value(samples, "seedance_kv_blocks_capacity") == 100
    assert value(samples, "seedance_prefix_cache_query_tokens_total") == 500
    assert value(samples, "seedance_prefix_cache_hit_tokens_total") == 200
    assert value(samples, "seedance_preemptions_total") == 4
    assert value(samples, "seedance_snapshot_writes_total") == 7
    state.engine = None  # loading: no engine families, no error
    assert "seedance_kv_blocks" not in Metrics(lambda: state).render().decode()


def test_transport_events_move_counters_and_histograms():
    hub = Observability(ServerConfig())
    obs = hub.request("ws", "ws1:a", session="s", engine=None)
    obs.tokens(1)
    obs.tokens(3)
    obs.finish(final(FinishReason.LENGTH, prompt=10, cached=8), 4, session_turn=True)
    obs.sent()
    sse = hub.request("sse", "cmpl-1")
    sse.finish(final(FinishReason.STOP), 0)
    hub.refused("ws", "ws1:b", "too_many_requests")
    hub.metrics.heartbeat_timeouts.inc()
    samples = samples_of(hub.metrics.render().decode())
    assert value(samples, "seedance_requests_total", transport="ws", outcome="length") == 1
    assert value(samples, "seedance_requests_total", transport="sse", outcome="stop") == 1
    assert value(samples, "seedance_requests_total", transport="ws", outcome="refused") == 1
    assert value(samples, "seedance_ttft_seconds_count", transport="ws") == 1
    assert value(samples, "seedance_inter_token_seconds_count", transport="ws") == 1
    assert value(samples, "seedance_completion_tokens_total", transport="ws") == 4
    assert value(samples, "seedance_session_kv_reuse_ratio_count") == 1
    assert value(samples, "seedance_session_kv_reuse_ratio_sum") == 0.8
    assert value(samples, "seedance_heartbeat_timeouts_total") == 1


def test_two_apps_have_separate_registries():
    a, b = Observability(ServerConfig()), Observability(ServerConfig())
    a.metrics.heartbeat_timeouts.inc()
    assert value(samples_of(b.metrics.render().decode()), "seedance_heartbeat_timeouts_total") == 0


async def test_metrics_route_needs_the_admin_scope_when_auth_is_on(monkeypatch):
    from seedance.server import app as app_module

    async def no_engine(app):  # the route and its protection need no model
        return None

    monkeypatch.setattr(app_module, "_load_engine", no_engine)
    cfg = ServerConfig(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER, session_store="memory://")
    async with TestClient(TestServer(app_module.build_app(cfg))) as client:
        r = await client.get("/metrics")
        assert r.status == 401
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {hs256(scope='generate')}"})
        assert r.status == 403
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {hs256(scope='admin')}"})
        assert r.status == 200
        samples = samples_of(await r.text())
        assert value(samples, "seedance_auth_refusals_total", code="unauthorized") == 1
        assert value(samples, "seedance_auth_refusals_total", code="forbidden") == 1


async def test_metrics_can_be_turned_off(monkeypatch):
    from seedance.server import app as app_module

    async def no_engine(app):
        return None

    monkeypatch.setattr(app_module, "_load_engine", no_engine)
    async with TestClient(TestServer(app_module.build_app(ServerConfig(metrics_enabled=False)))) as client:
        assert (await client.get("/metrics")).status == 404
