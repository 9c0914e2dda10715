"""Models as a user meets them: `seedance serve --model smollm2` answers a chat sensibly under its own name;
a model that cannot load makes `seedance serve` print one line and exit non-zero."""

from __future__ import annotations

import subprocess
import sys

import httpx

from seedance.bench.server_process import launch
from seedance.models.loader import BUILTIN_MODEL_DIR
from tests.models.gguf_files import write_gguf

SMOLLM2_NAME = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # the file's general.name


def test_smollm2_answers_the_capital_of_france(smollm2_server):
    models = httpx.get(f"{smollm2_server.http}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [SMOLLM2_NAME]
    body = {"model": SMOLLM2_NAME, "max_tokens": 32, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    reply = httpx.post(f"{smollm2_server.http}/v1/chat/completions", json=body, timeout=120).json()
    text = reply["choices"][0]["message"]["content"]
    assert "Paris" in text and text.strip().endswith("."), text  # a sentence, not just a word
    assert reply["choices"][0]["finish_reason"] == "stop"
    wrong = httpx.post(f"{smollm2_server.http}/v1/chat/completions", json={**body, "model": "gpt-4"}, timeout=30)
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"


def test_model_name_flag_overrides_the_models_own(tmp_path, tmp_path_factory):
    from gguf import GGMLQuantizationType as T

    path = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "tiny.gguf", T.Q8_0, name="tiny-gguf")
    store = f"sqlite://{tmp_path / 's.db'}"
    srv = launch({"model": path, "session_store": store}, tmp_path / "a.log", ready_timeout_s=120, poll_s=0.1)
    try:
        assert [m["id"] for m in httpx.get(f"{srv.http}/v1/models").json()["data"]] == ["tiny-gguf"]
        reply = httpx.post(f"{srv.http}/v1/completions", timeout=60,
                           json={"model": "tiny-gguf", "prompt": "And God said", "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
    finally:
        srv.stop()
    srv = launch({"model": path, "session_store": store, "model_name": "my-model"}, tmp_path / "b.log",
                 ready_timeout_s=120, poll_s=0.1)
    try:
        assert httpx.get(f"{srv.http}/readyz").json()["model"] == "my-model"
    finally:
        srv.stop()


def _serve(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seedance.cli", "serve", "--port", "0", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_models_that_cannot_load_exit_non_zero_with_one_line(tmp_path):
    from gguf import GGMLQuantizationType as T

    wrong = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "gpt2.gguf", T.F32, arch="gpt2")
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(wrong.read_bytes()[:100_000])
    cases = [(("--model", str(tmp_path / "missing.gguf")), 2, "is not a model"),
             (("--dtype", "float8"), 2, "unsupported dtype 'float8'"),
             (("--model", str(wrong)), 1, "unsupported GGUF architecture 'gpt2'"),
             (("--model", str(corrupt)), 1, "is not a readable GGUF file")]
    for args, code, message in cases:
        done = _serve(*args, tmp_path=tmp_path)
        assert done.returncode == code, (args, done.stderr[-2000:])
        errors = [line for line in done.stderr.splitlines() if message in line]
        assert len(errors) == 1, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
