"""scripts/check_imports.py: seedance/ has no import circles and no upward imports, and the checker does catch
them (planted in a scratch package)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_imports.py"


def run_checker(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_seedance_has_no_circles_and_no_upward_imports():
    out = run_checker(REPO / "seedance")
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_circle_through_a_deferred_import_is_found(tmp_path):
    root = write(tmp_path / "seedance", {
        "__init__.py": "",
        "server/__init__.py": "",
        "server/a.py": "from seedance.server.b import B\n",
        "server/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seedance.server import c\n",
        "server/c.py": "def f():\n    from . import a\n",
    })
    out = run_checker(root)
    assert out.returncode == 1
    assert "import circle: seedance.server.a -> seedance.server.b -> seedance.server.c -> seedance.server.a" \
        in out.stdout


def test_upward_and_io_imports_from_the_lower_layers_are_found(tmp_path):
    root = write(tmp_path / "seedance", {
        "__init__.py": "",
        "server/__init__.py": "",
        "server/http/state.py": "",
        "engine/__init__.py": "",
        "engine/config.py": "",
        "protocol/__init__.py": "",
        "protocol/codec.py": "import asyncio\n",
        "models/__init__.py": "",
        "models/runner.py": "from seedance.engine.config import X\n",
        "observability/__init__.py": "",
        "observability/hub.py": "from aiohttp import web\nfrom seedance.server.http.state import STATE\n",
        "sessions/__init__.py": "",
        "sessions/manager.py": "from seedance.engine import config\n",  # downward: fine
    })
    out = run_checker(root)
    assert out.returncode == 1
    problems = set(out.stdout.splitlines())
    assert problems == {
        "I/O import in protocol/: seedance.protocol.codec imports asyncio",
        "upward import: seedance.models.runner imports seedance.engine.config",
        "I/O import in observability/: seedance.observability.hub imports aiohttp",
        "upward import: seedance.observability.hub imports seedance.server.http.state",
    }
