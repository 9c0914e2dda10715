"""The `seedance` command as a new user meets it (issue #19): --version, serve --help, shared sampling defaults,
benchmark outputs outside the source tree, plots skipped without matplotlib, the state directory."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from seedance import cli
from seedance.server.http.config import ServerConfig

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(cli.app, list(args), terminal_width=240)


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"seedance {version('seedance')}"


def test_serve_help_shows_the_defaults_and_plain_metavars():
    text = re.sub(r"[│╭╮╰╯─]", " ", invoke("serve", "--help").output)
    text = re.sub(r"\s+", " ", text)
    defaults = ServerConfig()
    for option, metavar, default in [("--host", "ADDR", defaults.host), ("--port", "PORT", str(defaults.port)),
                                     ("--device", "DEVICE", defaults.engine.device),
                                     ("--dtype", "DTYPE", defaults.engine.dtype),
                                     ("--model", "MODEL", "the built-in seedance-tiny")]:
        line = re.search(rf"{option} {metavar} (.*?)(?= --[a-z])", text)
        assert line is not None, option
        assert f"(default: {default})" in line.group(1), (option, line.group(1))
    assert "<str>" not in text and "<int>" not in text and "<float>" not in text
    assert "--api-key KEY" in text and "--state-dir DIR" in text


def test_the_text_commands_share_their_sampling_defaults():
    commands = {c.callback.__name__: c.callback for c in cli.app.registered_commands}
    seen = {}
    for name in ("generate", "client", "chat"):
        params = inspect.signature(commands[name]).parameters
        seen[name] = tuple(params[p].default for p in ("max_tokens", "temperature", "top_p", "top_k"))
    assert len(set(seen.values())) == 1, seen


def _bench_defaults() -> dict[str, object]:
    out = {}
    for command in cli.bench_app.registered_commands:
        for name, param in inspect.signature(command.callback).parameters.items():
            if name in ("output", "plots", "plot") and isinstance(param.default, str):
                out[f"{command.callback.__name__}.{name}"] = param.default
    return out


def test_bench_outputs_default_outside_the_source_tree():
    defaults = _bench_defaults()
    assert len(defaults) >= 7, defaults
    for name, value in defaults.items():
        path = Path(value)
        assert path.is_absolute(), (name, value)
        assert REPO not in path.resolve().parents, (name, value)  # never bench/results or docs/images here


def test_without_matplotlib_plots_are_skipped_with_a_correct_hint(monkeypatch, tmp_path):
    from seedance.bench.plots import can_plot
    from seedance.bench.transports_bench import run_transports_bench

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    console = Console(record=True, width=200)
    assert can_plot(console) is False
    assert 'pip install "seedance[bench]"' in console.export_text()  # rich markup kept "[bench]"
    # bench transports says so before its run (and so skips them at the end instead of crashing there).
    console = Console(record=True, width=200)
    with pytest.raises(ValueError, match="unknown transport"):
        run_transports_bench([1], ["nope"], 1.0, 4, 1, "synthetic", 50.0, None, 500.0, 0, None, None,
                             str(tmp_path / "plots"), console=console)
    assert "plots skipped" in console.export_text() and not (tmp_path / "plots").exists()


def test_the_session_database_goes_to_the_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SEEDANCE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert ServerConfig.load(env={}).session_store_url() == f"sqlite://{tmp_path / 'xdg' / 'seedance' / 'sessions.db'}"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    assert ServerConfig.load(env={}).session_store_url() == (
        f"sqlite://{Path.home() / '.local' / 'state' / 'seedance' / 'sessions.db'}")
    chosen = ServerConfig.load(env={"SEEDANCE_STATE_DIR": str(tmp_path / "s")})
    assert chosen.session_store_url() == f"sqlite://{tmp_path / 's' / 'sessions.db'}"
    assert ServerConfig.load(env={}, state_dir=str(tmp_path / "flag")).session_store_url().endswith("flag/sessions.db")
    explicit = ServerConfig.load(env={"SEEDANCE_SESSION_STORE": "redis://127.0.0.1:6379/0"})
    assert explicit.session_store_url() == "redis://127.0.0.1:6379/0"
    assert not list(tmp_path.glob("*.db"))  # nothing in the working directory


def test_serve_compile_flag_turns_on_the_compiled_decode_step(monkeypatch):
    """`--compile` reaches the engine's config (and its absence leaves the env / file / default to decide)."""
    seen: list[ServerConfig] = []
    real_load = ServerConfig.load

    def load(*args, **kwargs):
        seen.append(real_load(*args, env={}, **kwargs))
        raise ValueError("stop here")  # serve reports it and exits 2 before loading any model

    monkeypatch.setattr(ServerConfig, "load", load)
    assert invoke("serve", "--compile").exit_code == 2
    assert invoke("serve").exit_code == 2
    assert [cfg.engine.compile for cfg in seen] == [True, False]


def test_bench_fuzz_starts_the_server_with_its_default_engine(monkeypatch):
    """`seedance bench fuzz` measures the server as it is deployed: without --engine, the server's own default
    engine_mode (process), not a mode of the harness's choosing; --engine still picks one."""
    from seedance.bench import fuzz

    started: list[dict] = []

    def launch(settings, *args, **kwargs):
        started.append(settings)
        raise RuntimeError("stop here")  # before any server starts

    monkeypatch.setattr(fuzz, "launch", launch)
    invoke("bench", "fuzz", "--output", "")
    invoke("bench", "fuzz", "--engine", "thread", "--output", "")
    default = ServerConfig().engine_mode
    assert [s.get("engine_mode", default) for s in started] == [default, "thread"]
    assert invoke("bench", "fuzz", "--engine", "fast").exit_code == 2
