"""The engine core's side of images (`--engine process`): core_process.CoreLoop with the tiny LLaVA engine on a
thread of the test, spoken to in frames over a socket pair. Pixels in, and the features its vision thread
answers with are the tower's; pixels that do not fit their shape fail that command only; a text request sent
in the same frame runs to its end."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from seedance.bench.llava_checkpoint import build_llava
from seedance.engine.config import EngineConfig
from seedance.engine.core_process import CoreLoop
from seedance.engine.core_protocol import (
    Add,
    Delivered,
    EncodeImages,
    FrameBuffer,
    Shutdown,
    Step,
    decode_to_gateway,
    frame,
    tensor_bytes,
)
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    path = build_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")
    engine = LLMEngine.from_config(EngineConfig(model=str(path), dtype="float32", num_kv_blocks=64, warmup=False))
    ours, theirs = socket.socketpair()
    loop = CoreLoop(engine, theirs)
    thread = threading.Thread(target=loop.run, name="test-core", daemon=True)
    thread.start()
    yield engine, ours
    ours.sendall(frame([Shutdown()]))
    thread.join(10)
    ours.close()


def steps_until(sock: socket.socket, done, timeout_s: float = 60) -> list[Step]:
    """Step frames from the core until done(all steps so far) holds."""
    sock.settimeout(timeout_s)
    frames, steps = FrameBuffer(), []
    while not done(steps):
        for body in frames.feed(sock.recv(1 << 20)):
            message = decode_to_gateway(body)
            if isinstance(message, Step):
                steps.append(message)
                if message.events:  # as a gateway does once its streams have them (max_steps_ahead)
                    sock.sendall(frame([Delivered(1)]))
    return steps


def image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 48, 3)) * 255).astype("uint8"))


def test_the_core_encodes_pixels_on_its_vision_thread_and_fails_only_a_bad_command(core):
    engine, sock = core
    pixels = engine.vision.preprocess([image(1), image(2)])
    dtype, data = tensor_bytes(pixels)
    text = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    sock.sendall(frame([EncodeImages(1, dtype, list(pixels.shape), data),
                        EncodeImages(2, "float32", [1, 3, 32, 32], b"\0" * 10),  # bytes that do not fit
                        Add("text", [1, 2, 3], text)]))

    def finished(steps: list[Step]) -> bool:
        keys = {e.key for s in steps for e in s.encoded}
        return keys == {1, 2} and any(e.request_id == "text" and e.finish_reason for s in steps for e in s.events)

    steps = steps_until(sock, finished)
    answers = {e.key: e for s in steps for e in s.encoded}
    assert answers[2].code == "invalid_request" and not answers[2].data
    got = answers[1].features()
    want = engine.vision.encode_pixels(pixels)
    assert [g.shape for g in got] == [(16, 64), (16, 64)]
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want, strict=True))
    assert len([e for s in steps for e in s.events if e.request_id == "text" and e.token_id >= 0]) == 4
    assert any(t.name.startswith("seedance-vision") for t in threading.enumerate())
