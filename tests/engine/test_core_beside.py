"""The engine core (`--engine process`) does a command's work that is not a step beside its step loop, so the
gap between two steps that every running stream waits on holds only the step: a guided request's grammar is
compiled on the guide thread before it is admitted, an embedding group's forward runs on the embedding thread.
core_process.CoreLoop with the built-in engine on a thread of the test, spoken to in frames over a socket pair.

The holds make it deterministic: while a compile or an embedding is held (a threading.Event in the test), the
streams must go on stepping; when the work ran in the loop, the loop itself waited and no Step frame came."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading

import pytest
import torch

from seedance.engine import core_process
from seedance.engine.config import EngineConfig
from seedance.engine.core_process import CoreLoop
from seedance.engine.core_protocol import (
    Abort,
    Add,
    Delivered,
    Embed,
    FrameBuffer,
    SetPriority,
    Shutdown,
    Step,
    decode_to_gateway,
    frame,
)
from seedance.engine.llm_engine import LLMEngine
from seedance.engine.sampling_params import GuidedDecoding, SamplingParams
from seedance.models.pooling import mean_pooled_embeddings

CHOICES = ["In the beginning", "Amen"]
STREAM = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def engine():
    return LLMEngine.from_config(EngineConfig(num_kv_blocks=128, warmup=False))


class Core:
    """A CoreLoop on its thread and the test's end of its socket."""

    def __init__(self, engine: LLMEngine) -> None:
        self.sock, theirs = socket.socketpair()
        self.loop = CoreLoop(engine, theirs)
        self.thread = threading.Thread(target=self.loop.run, name="test-core", daemon=True)
        self.thread.start()
        self.frames = FrameBuffer()

    def send(self, *commands) -> None:
        self.sock.sendall(frame(list(commands)))

    def steps(self, done, timeout_s: float = 30) -> list[Step]:
        """Step frames until done(all of them so far) holds; socket.timeout if none comes within timeout_s."""
        self.sock.settimeout(timeout_s)
        steps: list[Step] = []
        while not done(steps):
            for body in self.frames.feed(self.sock.recv(1 << 20)):
                message = decode_to_gateway(body)
                if isinstance(message, Step):
                    steps.append(message)
                    if message.events:  # as a gateway does once its streams have them (max_steps_ahead)
                        self.send(Delivered(1))
        return steps

    def close(self) -> None:
        self.send(Shutdown())
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def core(engine):
    core = Core(engine)
    yield core
    core.close()


@pytest.fixture
def held(monkeypatch):
    """While this event is clear, the work under test waits (set at teardown, so no thread is left waiting)."""
    event = threading.Event()
    yield event
    event.set()


def tokens_of(steps: list[Step], request_id: str) -> list[int]:
    return [e.token_id for s in steps for e in s.events if e.request_id == request_id and e.token_id >= 0]


def text_of(steps: list[Step], request_id: str) -> str:
    return "".join(e.text_delta for s in steps for e in s.events if e.request_id == request_id)


def finished(request_id: str):
    return lambda steps: any(e.request_id == request_id and e.finish_reason for s in steps for e in s.events)


def admitted(steps: list[Step]) -> set[str]:
    return {r for s in steps for r in s.admitted}


def hold_compiles(monkeypatch, engine: LLMEngine, held: threading.Event) -> list[str]:
    """Every compile of a grammar not cached yet waits for `held`; returns the threads they ran on."""
    guides, real = engine.guides, engine.guides.compile
    threads: list[str] = []

    def compile_held(guided):
        if not guides.cached(guided):
            threads.append(threading.current_thread().name)
            assert held.wait(30)
        return real(guided)

    monkeypatch.setattr(guides, "compile", compile_held)
    return threads


def start_stream(core: Core, request_id: str) -> None:
    core.send(Add(request_id, [1, 2, 3], STREAM))
    core.steps(lambda steps: len(tokens_of(steps, request_id)) >= 2)


def test_a_grammar_compiles_beside_the_loop_while_the_streams_step(core, engine, held, monkeypatch):
    threads = hold_compiles(monkeypatch, engine, held)
    start_stream(core, "run")
    guided = SamplingParams(max_tokens=12, temperature=0, guided=GuidedDecoding("choice", json.dumps(CHOICES)))
    core.send(Add("g", [4, 5, 6], guided))
    # the compile is held: the running stream must still get its tokens, step after step (in the loop: none)
    during = core.steps(lambda steps: len(tokens_of(steps, "run")) >= 5, timeout_s=5)
    assert "g" not in admitted(during)
    assert threads and all(t.startswith("seedance-guide") for t in threads)
    held.set()
    after = core.steps(finished("g"))
    assert "g" in admitted(after)
    assert text_of(after, "g") in CHOICES  # the grammar compiled beside is the one it decoded under
    core.send(Abort("run"))


def test_an_abort_while_compiling_ends_it_unadmitted(core, engine, held, monkeypatch):
    hold_compiles(monkeypatch, engine, held)
    guided = SamplingParams(max_tokens=4, temperature=0, guided=GuidedDecoding("regex", "(ab)+c"))
    core.send(Add("g2", [1, 2], guided), SetPriority("g2", -3))
    core.send(Abort("g2"))
    aborted = core.steps(lambda steps: any(e.request_id == "g2" for s in steps for e in s.aborted))
    assert [e.finish_reason for s in aborted for e in s.aborted if e.request_id == "g2"] == ["cancelled"]
    held.set()
    core.send(Add("after", [1, 2, 3], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)))
    later = core.steps(finished("after"))
    assert "g2" not in admitted(aborted + later) and not tokens_of(aborted + later, "g2")
    assert "g2" not in engine.requests and not core.loop.compiling


def test_a_bad_grammar_compiled_beside_is_refused_and_the_next_one_runs(core):
    bad = SamplingParams(max_tokens=4, guided=GuidedDecoding("regex", "(unclosed"))
    good = SamplingParams(max_tokens=12, temperature=0, guided=GuidedDecoding("choice", json.dumps(["x y", "z"])))
    core.send(Add("bad", [1, 2], bad), Add("good", [1, 2], good))
    steps = core.steps(finished("good"))
    refusals = {r.request_id: r.code for s in steps for r in s.refused}
    assert refusals == {"bad": "invalid_request"}
    assert text_of(steps, "good") in ("x y", "z")


def test_a_large_embedding_group_runs_a_slice_a_turn_between_the_streams_steps(core, engine, monkeypatch):
    """In the loop's own thread (no GIL shared with a thread beside), at most embedding_tokens_per_turn tokens of
    inputs between two steps (a longer input alone), and the vectors are those computed alone."""
    inputs = [[5, 6, 7, 8] * 10, [9, 10] * 20, [11] * 30, [12, 13] * 60, [3] * 5, [14] * 200, [4] * 5, [2] * 5]
    slices = [inputs[0:3], inputs[3:5], inputs[5:6], inputs[6:8]]
    want = [v for part in slices for v in mean_pooled_embeddings(engine.runner.model, part)]
    real, calls = core_process.mean_pooled_embeddings, []

    def embed_noting(model, group):
        calls.append((threading.current_thread().name, [len(g) for g in group], len(core.loop.engine.requests)))
        return real(model, group)

    monkeypatch.setattr(core_process, "mean_pooled_embeddings", embed_noting)
    start_stream(core, "run")
    core.send(Embed(7, inputs))
    steps = core.steps(lambda steps: any(s.embedded for s in steps))
    budget = engine.config.embedding_tokens_per_turn
    assert budget == 128
    assert [sizes for _, sizes, _ in calls] == [[40, 40, 30], [120, 5], [200], [5, 5]]  # within 128, or alone
    assert {thread for thread, _, _ in calls} == {"test-core"} and all(running for _, _, running in calls)
    # the stream stepped between the slices: a token per step, the answer with the last slice's step
    assert len(tokens_of(steps, "run")) >= len(calls) - 1
    (answer,) = [e for s in steps for e in s.embedded]
    got = torch.frombuffer(bytearray(answer.data), dtype=torch.float32).reshape(-1, answer.dim)
    assert answer.key == 7 and torch.allclose(got, torch.stack(want), atol=1e-6)
    whole = torch.stack(mean_pooled_embeddings(engine.runner.model, inputs))  # batched otherwise: rounding apart
    assert torch.nn.functional.cosine_similarity(got, whole).min() > 0.999
    core.send(Abort("run"))


def test_an_embedding_that_fails_fails_alone(core, engine, monkeypatch):
    real = core_process.mean_pooled_embeddings

    def embed_failing(model, group):
        if group == [[66, 67]]:
            raise RuntimeError("boom")
        return real(model, group)

    monkeypatch.setattr(core_process, "mean_pooled_embeddings", embed_failing)
    core.send(Embed(1, [[66, 67]]), Embed(2, [[5, 6]]), Embed(3, []))
    steps = core.steps(lambda steps: len([e for s in steps for e in s.embedded]) == 3)
    answers = {e.key: e for s in steps for e in s.embedded}
    assert "boom" in answers[1].error and answers[2].error is None and answers[2].dim == engine.hidden_size
    assert answers[3].error and answers[3].code == "invalid_request"


def test_embeddings_beside_a_stream_change_neither_its_tokens_nor_theirs(core, engine):
    """The forward on the embedding thread and the steps share the weights at once: a greedy stream's tokens
    are those it gets alone, and every embedding is the one computed alone."""
    alone = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    core.send(Add("alone", [1, 2, 3], alone))
    want_tokens = tokens_of(core.steps(finished("alone")), "alone")
    groups = {k: [[k + 1, k + 2, k + 3] * (k % 4 + 1), [k + 7]] for k in range(12)}
    want = {k: torch.stack(mean_pooled_embeddings(engine.runner.model, g)) for k, g in groups.items()}
    core.send(Add("beside", [1, 2, 3], alone), *(Embed(k, g) for k, g in groups.items()))
    steps = core.steps(lambda steps: finished("beside")(steps) and len([e for s in steps for e in s.embedded]) == 12)
    assert tokens_of(steps, "beside") == want_tokens
    for answer in (e for s in steps for e in s.embedded):
        got = torch.frombuffer(bytearray(answer.data), dtype=torch.float32).reshape(-1, answer.dim)
        assert torch.allclose(got, want[answer.key], atol=1e-5), answer.key


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_a_grammar_compiles_on_a_thread_nicer_than_the_loop(core, engine, monkeypatch):
    """On a busy machine the kernel then gives the step loop (every stream's next token) the CPU first."""
    nice: dict[str, int] = {}
    guides, real = engine.guides, engine.guides.compile

    def compile_noting(guided):
        if threading.current_thread().name.startswith("seedance-guide"):
            nice["guide"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return real(guided)

    monkeypatch.setattr(guides, "compile", compile_noting)
    guided = SamplingParams(max_tokens=3, temperature=0, guided=GuidedDecoding("regex", "(xy)+z"))
    core.send(Add("gn", [1, 2], guided))
    core.steps(finished("gn"))
    loop = os.getpriority(os.PRIO_PROCESS, core.thread.native_id)
    assert engine.config.beside_nice == 10
    assert nice["guide"] == min(19, loop + 10)
