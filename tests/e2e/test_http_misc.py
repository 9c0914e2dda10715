import httpx


def test_health_ready_and_stats(server):
    assert httpx.get(f"{server.http}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.http}/readyz").json()
    assert ready == {"status": "ready", "model": "seedance-tiny"}
    stats = server.stats()
    assert stats["num_kv_blocks"] == 1024 and stats["num_free_blocks"] <= 1024


def test_unknown_routes_and_methods_get_json_errors(server):
    missing = httpx.get(f"{server.http}/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{server.http}/v1/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_demo_page_is_served(server):
    page = httpx.get(f"{server.http}/")
    assert page.status_code == 200 and "/v1/stream" in page.text
