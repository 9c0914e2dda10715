"""Model identity (what snapshots are bound to): equal for the same files anywhere, different for other weights."""

from __future__ import annotations

import os
import shutil

from seedance.models.identity import model_identity, weights_fingerprint
from seedance.models.loader import BUILTIN_MODEL_DIR


def test_a_copy_of_the_model_has_the_same_identity_and_changed_weights_do_not(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(BUILTIN_MODEL_DIR, copy)
    os.utime(copy / "model.safetensors", (0, 0))  # another replica's files: other mtimes, same contents
    assert weights_fingerprint(copy) == weights_fingerprint(BUILTIN_MODEL_DIR)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of one tensor, inside a sampled chunk
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != weights_fingerprint(BUILTIN_MODEL_DIR)


def test_the_dtype_is_part_of_the_identity():
    assert model_identity(BUILTIN_MODEL_DIR, "float32") != model_identity(BUILTIN_MODEL_DIR, "bfloat16")
    assert model_identity(None, "float32", synthetic=True) == "synthetic/float32"


def test_a_gguf_file_has_an_identity_of_its_own(tmp_path):
    from gguf import GGMLQuantizationType

    from tests.models.gguf_files import write_gguf

    f32 = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "f32.gguf")
    q8 = write_gguf(BUILTIN_MODEL_DIR, tmp_path / "q8.gguf", GGMLQuantizationType.Q8_0)
    assert weights_fingerprint(f32) == weights_fingerprint(f32)
    assert weights_fingerprint(f32) != weights_fingerprint(q8)
    assert model_identity(q8, "float32", quantize="auto") != model_identity(q8, "float32", quantize="none")
