"""The HTTP polling transport (/v1/jobs) against the real server, driven by httpx."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator

import httpx
import pytest

PROMPT = "And God said"
GREEDY = {"temperature": 0, "ignore_eos": True}
LONG = {"prompt": "And", "max_tokens": 3000, "ignore_eos": True}


@pytest.fixture
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http, timeout=30) as c:
        yield c


def create(http: httpx.Client, body: dict) -> str:
    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "running"
    assert r.headers["Location"] == f"/v1/jobs/{job_id}"
    return job_id


def poll_to_end(http: httpx.Client, job_id: str, timeout: float = 60) -> tuple[list[dict], dict]:
    """Long-poll from the start until the job ends; (every chunk in order, the last reply).
    Checks on the way that every poll returns exactly the chunks after the `after` it sent."""
    chunks: list[dict] = []
    after, promised = -1, 0
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"job {job_id} not done in {timeout}s"
        r = http.get(f"/v1/jobs/{job_id}", params={"after": after, "wait_ms": 2000})
        assert r.status_code == 200, r.text
        reply = r.json()
        assert [c["seq"] for c in reply["chunks"]] == list(range(after + 1, after + 1 + len(reply["chunks"])))
        chunks += reply["chunks"]
        assert reply["last_seq"] == len(chunks) - 1 and reply["next_seq"] == len(chunks)
        if reply["chunks"] and after >= 0:
            assert reply["chunks"][0]["seq"] == promised  # next_seq is the seq the next chunk has
        after, promised = reply["last_seq"], reply["next_seq"]
        if reply["status"] != "running":
            return chunks, reply


def wait_idle(http: httpx.Client, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = http.get("/stats").json()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["open_requests"] == 0:
            return stats
        assert time.monotonic() < deadline, f"still busy after {timeout}s: {stats}"
        time.sleep(0.02)


def test_long_poll_job_matches_openai_completion(http):
    job_id = create(http, {"prompt": PROMPT, "max_tokens": 40, **GREEDY})
    chunks, final = poll_to_end(http, job_id)
    assert final["status"] == "done" and final["finish_reason"] == "length"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))  # contiguous, no duplicates across polls
    assert sum(len(c["token_ids"]) for c in chunks) == 40
    assert final["usage"]["completion_tokens"] == 40

    reference = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 40, **GREEDY}).json()
    assert "".join(c["text"] for c in chunks) == reference["choices"][0]["text"]
    assert final["usage"]["prompt_tokens"] == reference["usage"]["prompt_tokens"] > 0
    assert final["usage"]["completion_tokens"] == reference["usage"]["completion_tokens"]


def test_chat_messages_job(http):
    messages = [{"role": "user", "content": "Who made the heaven and the earth?"}]
    job_id = create(http, {"messages": messages, "max_tokens": 8, **GREEDY})
    chunks, final = poll_to_end(http, job_id)
    reference = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, **GREEDY}).json()
    assert "".join(c["text"] for c in chunks) == reference["choices"][0]["message"]["content"]
    assert final["usage"]["prompt_tokens"] == reference["usage"]["prompt_tokens"]


def test_token_prompt_and_stop_string(http):
    tokens = [1063, 389, 392]
    b64 = base64.b64encode(struct.pack("<3I", *tokens)).decode()
    _, final = poll_to_end(http, create(http, {"prompt_b64": b64, "max_tokens": 3, **GREEDY}))
    assert final["usage"]["prompt_tokens"] == 3 and final["usage"]["completion_tokens"] == 3

    free = "".join(c["text"] for c in poll_to_end(http, create(http, {"prompt": PROMPT, "max_tokens": 30,
                                                                      **GREEDY}))[0])
    stop = " " + free.split()[len(free.split()) // 2]
    chunks, final = poll_to_end(http, create(http, {"prompt": PROMPT, "max_tokens": 30, "stop": stop,
                                                   **GREEDY}))
    assert final["finish_reason"] == "stop" and final["stop_reason"] == stop
    assert "".join(c["text"] for c in chunks) == free[: free.index(stop)]


def test_while_running_a_long_poll_waits_for_new_chunks(http):
    job_id = create(http, {"prompt": PROMPT, "max_tokens": 200, **GREEDY})
    after, seen = -1, 0
    deadline = time.monotonic() + 60
    while seen < 5:
        assert time.monotonic() < deadline
        reply = http.get(f"/v1/jobs/{job_id}", params={"after": after, "wait_ms": 10_000}).json()
        if reply["status"] != "running":
            break
        assert reply["chunks"], reply  # a running job's long poll returns only once there is something new
        after, seen = reply["last_seq"], seen + 1
    assert seen == 5
    http.delete(f"/v1/jobs/{job_id}")


def test_after_returns_only_newer_chunks_and_finished_jobs_answer_at_once(http):
    job_id = create(http, {"prompt": PROMPT, "max_tokens": 30, **GREEDY})
    chunks, final = poll_to_end(http, job_id)
    assert len(chunks) >= 3
    everything = http.get(f"/v1/jobs/{job_id}").json()
    assert everything["chunks"] == chunks and everything["status"] == "done"
    middle = len(chunks) // 2
    newer = http.get(f"/v1/jobs/{job_id}", params={"after": middle}).json()
    assert newer["chunks"] == chunks[middle + 1 :]
    assert newer["last_seq"] == len(chunks) - 1 and newer["next_seq"] == len(chunks)

    started = time.monotonic()
    reply = http.get(f"/v1/jobs/{job_id}", params={"after": len(chunks) - 1, "wait_ms": 10_000}).json()
    assert time.monotonic() - started < 2  # finished: nothing will come, so no waiting
    assert reply["chunks"] == [] and reply["status"] == "done" and reply["usage"] == final["usage"]
    beyond = http.get(f"/v1/jobs/{job_id}", params={"after": 10_000, "wait_ms": 10_000}).json()
    assert beyond["chunks"] == []


def test_delete_cancels_a_long_job(http):
    wait_idle(http)
    job_id = create(http, LONG)
    deadline = time.monotonic() + 30
    while not http.get(f"/v1/jobs/{job_id}", params={"wait_ms": 1000}).json()["chunks"]:
        assert time.monotonic() < deadline
    # /stats is the engine core's as of its last frame (every 50 ms while busy): a first chunk can come before it
    while http.get("/stats").json()["num_running"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    r = http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200
    assert r.json() == {"id": job_id, "status": "cancelled", "finish_reason": "cancelled"}
    view = http.get(f"/v1/jobs/{job_id}").json()
    assert view["status"] == "cancelled" and view["finish_reason"] == "cancelled"
    assert 0 < view["usage"]["completion_tokens"] < 3000
    stats = wait_idle(http)
    assert stats["num_free_blocks"] + stats["num_pinned_blocks"] == stats["num_kv_blocks"]
    again = http.delete(f"/v1/jobs/{job_id}")  # deleting a finished job is harmless and says how it ended
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_unknown_job_is_404_json(http, method):
    r = http.request(method, "/v1/jobs/job-does-not-exist")
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "not_found_error"
    assert "job-does-not-exist" in error["message"]


@pytest.mark.parametrize(("body", "code", "message"), [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"[1, 2]", "invalid_json", "JSON object"),
    ({"prompt": "x", "max_tokens": "lots"}, "invalid_message", "max_tokens: expected int, got str"),
    ({"prompt": "x", "max_tokens": 0}, "invalid_message", "max_tokens: expected int >= 1"),
    ({"prompt": 5}, "invalid_message", "prompt: expected str"),
    ({}, "invalid_message", "exactly one of prompt, messages, prompt_b64, prompt_parts is required, got none"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "invalid_message", "prompt and messages"),
    ({"prompt": "x", "temperature": -1}, "invalid_message", "temperature: expected float >= 0.0"),
    ({"type": "cancel", "prompt": "x"}, "invalid_request", "type must be 'generate'"),
    ({"type": "ping"}, "invalid_request", "type must be 'generate'"),
    ({"prompt": "", "max_tokens": 2}, "invalid_request", "prompt is empty"),
    ({"prompt": "x", "max_tokens": 100_000}, "invalid_request", "exceeds the limit"),
    ({"prompt_b64": "AAAAAA==", "prompt_format": "embedding_f32le"}, "invalid_request", "whole number of rows"),
    ({"prompt": "x", "n": 2}, "unsupported", "a job has one choice (n = 1)"),
    ({"prompt": "x", "n": 17}, "invalid_message", "n: expected int <= 16"),
])
def test_bad_bodies_get_400_with_a_precise_message(http, body, code, message):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    jobs_before = http.get("/stats").json()["jobs"]
    r = http.post("/v1/jobs", headers={"Content-Type": "application/json"}, **kwargs)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code
    assert message in error["message"], error["message"]
    assert http.get("/stats").json()["jobs"] == jobs_before  # nothing was created


@pytest.mark.parametrize("query", [{"after": "abc"}, {"after": "1.5"}, {"after": "-2"}, {"wait_ms": "soon"}])
def test_invalid_query_is_400(http, query):
    job_id = create(http, {"prompt": PROMPT, "max_tokens": 2})
    r = http.get(f"/v1/jobs/{job_id}", params=query)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == next(iter(query))


def test_finished_jobs_expire_after_the_ttl(server_factory):
    srv = server_factory(job_ttl_s=0.5)
    with httpx.Client(base_url=srv.http, timeout=30) as http:
        job_id = create(http, {"prompt": PROMPT, "max_tokens": 4})
        poll_to_end(http, job_id)
        assert http.get(f"/v1/jobs/{job_id}").status_code == 200  # kept for late readers at first
        finished = time.monotonic()
        while (r := http.get(f"/v1/jobs/{job_id}")).status_code == 200:
            assert time.monotonic() - finished < 10, "job never expired"
            time.sleep(0.05)
        assert time.monotonic() - finished >= 0.4  # not before the TTL
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert http.get("/stats").json()["jobs"] == 0


def test_max_jobs_bound(server_factory):
    srv = server_factory(max_jobs=2, job_ttl_s=0.5)
    with httpx.Client(base_url=srv.http, timeout=30) as http:
        first, second = create(http, LONG), create(http, LONG)
        r = http.post("/v1/jobs", json=LONG)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        error = r.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "rate_limit_error" and "2 jobs" in error["message"]
        assert http.get("/stats").json()["jobs"] == 2
        for job_id in (first, second):
            assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
        wait_idle(http)
        deadline = time.monotonic() + 10  # once the finished jobs expire, there is room again
        while (r := http.post("/v1/jobs", json={"prompt": PROMPT, "max_tokens": 2})).status_code == 429:
            assert time.monotonic() < deadline, "slots never freed"
            time.sleep(0.05)
        assert r.status_code == 202
