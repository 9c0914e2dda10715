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
