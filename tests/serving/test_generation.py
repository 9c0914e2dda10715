"""Generation: the accounting every transport shares (counts, output, the observability hooks, the replay
log), with the transports' encoders left out."""

from types import SimpleNamespace

from seedance.engine.events import FinishReason, TokenEvent
from seedance.serving.generation import END, Generation, split_replay


def generation(**kw) -> tuple[Generation, SimpleNamespace]:
    calls = SimpleNamespace(tokens=[], finished=[])
    obs = SimpleNamespace(tokens=calls.tokens.append,
                          finish=lambda final, n, turn: calls.finished.append((final.finish_reason, n, turn)))
    return Generation("a", SimpleNamespace(request_id="ws1:a"), None, obs=obs, **kw), calls


def event(seq: int, token_id: int, text: str, finish: FinishReason | None = None) -> TokenEvent:
    return TokenEvent("ws1:a", seq, token_id, text, finish_reason=finish, num_prompt_tokens=5)


def test_take_counts_tokens_and_text_and_a_final_event_without_a_token():
    gen, calls = generation()
    step = gen.take([event(0, 11, "He"), event(1, 12, "llo")])
    assert (len(step.tokens), step.text, step.final) == (2, "Hello", None)
    end = event(2, -1, "!", FinishReason.STOP)  # a held-back stop string's text, no token
    step = gen.take([end])
    assert (step.tokens, step.text, step.final) == ([], "!", end)
    assert gen.completion_tokens == 2 and gen.output_token_ids == [11, 12] and "".join(gen.output_text) == "Hello!"
    assert calls.tokens == [2]  # an empty batch records nothing
    assert not gen.finished
    gen.end(end)
    assert gen.finished and calls.finished == [(FinishReason.STOP, 2, False)]
    assert gen.engine_id == "ws1:a"


def test_a_session_turn_is_recorded_as_one():
    gen, calls = generation(session_id="s")
    gen.end(event(0, 7, "x", FinishReason.LENGTH))
    assert calls.finished == [(FinishReason.LENGTH, 0, True)]


def test_the_replay_log_keeps_only_what_a_resume_has_not_seen():
    gen, _ = generation(log=[])
    texts: list[bytes] = []
    frames: list[bytes] = []
    gen.emit(texts, 0, False, b"c0")
    gen.emit(frames, 1, True, b"f1")
    gen.emit(texts, END, False, b"done")
    assert texts == [b"c0", b"done"] and frames == [b"f1"]
    assert gen.replay_after(-1) == ([b"c0", b"done"], [b"f1"])
    assert gen.replay_after(0) == ([b"done"], [b"f1"])
    assert gen.replay_after(1) == ([b"done"], [])
    assert split_replay(gen.log, END) == ([], [])


def test_no_log_without_a_session():
    gen, _ = generation()
    out: list[bytes] = []
    gen.emit(out, 0, False, b"c0")
    assert out == [b"c0"] and gen.replay_after(-1) == ([], [])
