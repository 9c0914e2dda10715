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
