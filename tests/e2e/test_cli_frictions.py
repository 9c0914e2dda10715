"""The `seedance` command against real processes (issue #19): a port in use, `generate` with and without a
server, `chat` quitting on Ctrl-C at the prompt, and the server log telling JSON from SSE requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx

SEEDANCE = [sys.executable, "-m", "seedance.cli"]


def run(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SEEDANCE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = run(["serve", "--port", str(port)], SEEDANCE_STATE_DIR=str(tmp_path))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"seedance serve: cannot listen on 127.0.0.1:{port}: the address is already in use (another server "
        "running?); choose another with --port, or stop the one holding it"]


def test_generate_streams_from_a_running_server_with_url(server):
    out = run(["generate", "--url", server.ws, "-n", "4", "-t", "0", "In the beginning"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("In the beginning") and len(out.stdout.strip()) > len("In the beginning")
    assert "4 tokens" in out.stderr and "loading the model" not in out.stderr


def test_generate_without_url_says_it_loads_the_model_itself(tmp_path):
    out = run(["generate", "-n", "2", "-t", "0", "Amen"])
    assert out.returncode == 0, out.stderr
    assert "loading the model in this process (no server)" in out.stderr and "--url" in out.stderr
    assert out.stdout.startswith("Amen")


def test_chat_quits_at_once_on_ctrl_c_at_the_prompt(server):
    proc = subprocess.Popen([*SEEDANCE, "chat", "--url", server.ws], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "session chat-" in proc.stderr.readline()  # connected; now waiting at the prompt
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in proc.stderr.read()


def test_the_log_labels_non_streaming_openai_requests_json(server):
    body = {"prompt": "Blessed are", "max_tokens": 2}
    plain = httpx.post(f"{server.http}/v1/completions", json=body, timeout=60).json()["id"]
    with httpx.stream("POST", f"{server.http}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]  # to the end
    streamed_id = events[0]["id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and f"sse {streamed_id} finished" not in server.log():
        time.sleep(0.1)
    log = server.log()
    assert f"json {plain} finished" in log and f"sse {plain} finished" not in log
    assert f"sse {streamed_id} finished" in log
