"""The KV pool's default size follows the model; --kv-cache-memory sets it."""

from __future__ import annotations

import psutil
import pytest
import torch
import typer

from seedance.cli import parse_bytes
from seedance.engine.config import EngineConfig, default_kv_cache_bytes
from seedance.engine.model_runner import TorchModelRunner, lazy_zeros
from seedance.models.loader import load_model


def test_default_pool_scales_with_bytes_per_token_and_is_capped():
    cfg = EngineConfig()
    tiny = default_kv_cache_bytes(cfg, 6144, 2048)
    smollm2 = default_kv_cache_bytes(cfg, 46080, 8192)
    assert tiny == 32768 * 6144 and smollm2 == 32768 * 46080  # 192 MiB vs 1,440 MiB
    capped = default_kv_cache_bytes(EngineConfig(kv_cache_max_fraction=1e-9), 46080, 8192)
    assert capped == 46080 * cfg.block_size  # never below one block


def test_runner_uses_the_default_or_the_explicit_size():
    loaded = load_model(None)
    default = TorchModelRunner(loaded, EngineConfig())
    assert default.num_kv_blocks * default.kv_bytes_per_token * 16 == 32768 * default.kv_bytes_per_token
    explicit = TorchModelRunner(loaded, EngineConfig(kv_cache_bytes=16 * 2**20))
    assert explicit.num_kv_blocks == 16 * 2**20 // (explicit.kv_bytes_per_token * 16)


@pytest.mark.parametrize(("text", "value"), [("268435456", 268435456), ("256MiB", 256 * 2**20), ("256M", 256 * 2**20),
                                             ("1.5GiB", int(1.5 * 2**30)), ("64 KiB", 64 * 1024)])
def test_memory_sizes_parse(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1GiB", "12PB"])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(typer.BadParameter):
        parse_bytes(text)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_pool_is_zeros_that_cost_no_memory_until_written(dtype):
    rss = psutil.Process().memory_info().rss
    pool = lazy_zeros((2**20, 4, 32), dtype, torch.device("cpu"))  # 512 / 256 MiB
    assert pool.shape == (2**20, 4, 32) and pool.dtype == dtype and pool.is_contiguous()
    assert psutil.Process().memory_info().rss - rss < 64 * 2**20  # not touched: no resident pages yet
    pool.index_copy_(0, torch.tensor([5, 2**20 - 1]), torch.ones(2, 4, 32, dtype=dtype))
    assert pool.count_nonzero() == 2 * 4 * 32 and pool[5].eq(1).all() and pool[:5].eq(0).all()
