"""Where Seedance writes files of its own when not told otherwise: a state directory, never the current
working directory (which is often a source checkout, where a default output would overwrite committed files).

`state_dir()`: `--state-dir` / `state_dir` / `SEEDANCE_STATE_DIR` if given, else `$XDG_STATE_HOME/seedance`,
else `~/.local/state/seedance` (the XDG Base Directory default). The session database lives there
(`sessions.db`); benchmark results and plots go to its `bench/` folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("SEEDANCE_STATE_DIR"):
        return Path(os.environ["SEEDANCE_STATE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    # The XDG spec: a relative XDG_STATE_HOME is invalid and ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "seedance"


def results_dir() -> Path:
    """Benchmark outputs (JSON reports, PNG plots) by default."""
    return state_dir() / "bench"


def results_path(name: str) -> str:
    return str(results_dir() / name)
