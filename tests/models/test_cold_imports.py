"""Start-up imports only what serving needs: each module below cost the cold start 0.05-1.8 s when it crept in
(docs/benchmarks.md, "Cold start"). Checked in a fresh interpreter, since the test process imports them anyway."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("transformers", "sympy", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
         "opentelemetry.sdk.trace", "jwt", "rich")  # tracing is off, JWT unset, serve prints no rich output

PROGRAM = """
import json, sys
import seedance.cli, seedance.server.app
from seedance.engine.config import EngineConfig
from seedance.engine.llm_engine import LLMEngine
engine = LLMEngine.from_config(EngineConfig(warmup=True))
engine.warmup()
print(json.dumps([m for m in %r if m in sys.modules]))
"""


def test_serving_the_builtin_model_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROGRAM % (HEAVY,)], capture_output=True, text=True, timeout=120,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


GATEWAY = """
import json, pkgutil, sys
import seedance.cli, seedance.server.app, seedance.server.transports
from seedance.engine import core_protocol, core_spawn, embedding, process_engine, prompt_embeds  # noqa: F401
from seedance.sessions import manager, snapshot  # noqa: F401
for info in pkgutil.iter_modules(seedance.server.transports.__path__, "seedance.server.transports."):
    __import__(info.name)
print(json.dumps([m for m in ("torch", "transformers", "safetensors", "seedance.models.loader",
                              "seedance.engine.llm_engine") if m in sys.modules]))
"""


def test_the_process_mode_gateway_imports_no_torch():
    """`--engine process`: the gateway parses, tokenizes, routes and writes; torch (~2 s of CPU and ~200 MiB
    here) loads only in the engine process. Every module the gateway builds its app from, torch-free at import
    (tests/e2e/test_engine_process.py checks the running gateway, after requests, has no libtorch mapped)."""
    out = subprocess.run([sys.executable, "-c", GATEWAY], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
