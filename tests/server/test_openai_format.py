"""server/transports/openai_format.py, the OpenAI wire shapes, without a server (the SDK-level checks are
tests/e2e/test_openai_sse.py)."""

from types import SimpleNamespace

from seedance.engine.events import FinishReason, TokenEvent
from seedance.server.transports.openai_format import OpenAIFormatter, openai_finish_reason

TOKENIZER = SimpleNamespace(decode=lambda ids: {1: "In", 2: " the", 3: " be"}[ids[0]])


def ev(token_id: int, logprob: float, top=None) -> TokenEvent:
    return TokenEvent("r", 0, token_id, "", logprob=logprob, top_logprobs=top)


def test_completion_logprobs_carry_text_offsets_across_chunks():
    fmt = OpenAIFormatter(False, "m", "cmpl-1", TOKENIZER)
    first = fmt.logprobs([ev(1, -0.5, ((1, -0.5), (2, -1.5)))], 2)
    second = fmt.logprobs([ev(2, -0.25), TokenEvent("r", 1, -1, "", finish_reason=FinishReason.STOP)], 2)
    assert first == {"tokens": ["In"], "token_logprobs": [-0.5], "top_logprobs": [{"In": -0.5, " the": -1.5}],
                     "text_offset": [0]}
    assert second["tokens"] == [" the"] and second["text_offset"] == [2]  # after "In"; the tokenless end skipped
    assert fmt.logprobs([ev(3, -1.0)], None) is None  # not asked for


def test_chat_chunks_open_with_the_role_and_end_with_an_empty_delta():
    fmt = OpenAIFormatter(True, "m", "chatcmpl-1", TOKENIZER)
    opening = fmt.chunk("In", None, None, first=True)
    closing = fmt.chunk("", None, "stop", first=False)
    assert opening["object"] == "chat.completion.chunk" and opening["id"] == "chatcmpl-1"
    assert opening["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "In"}, "logprobs": None,
                                   "finish_reason": None}]
    assert closing["choices"][0]["delta"] == {} and closing["choices"][0]["finish_reason"] == "stop"
    assert fmt.logprobs([ev(2, -0.1)], 0) == {"content": [
        {"token": " the", "logprob": -0.1, "bytes": list(b" the"), "top_logprobs": []}]}


def test_usage_and_full_bodies():
    fmt = OpenAIFormatter(False, "m", "cmpl-2", TOKENIZER)
    usage = fmt.usage(prompt_tokens=7, completion_tokens=3, cached_tokens=4)
    assert usage == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                     "prompt_tokens_details": {"cached_tokens": 4}}
    tail = fmt.usage_chunk(usage)
    assert tail["choices"] == [] and tail["usage"] is usage and tail["object"] == "text_completion"
    body = fmt.full("In the", None, "length", usage)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "In the"
    chat = OpenAIFormatter(True, "m", "chatcmpl-2", TOKENIZER).full("hi", None, "stop", usage)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"] == {"role": "assistant",
                                                                                      "content": "hi"}


def test_finish_reasons_map_to_openai_words():
    assert openai_finish_reason(FinishReason.LENGTH) == "length"
    assert [openai_finish_reason(r) for r in (FinishReason.STOP, FinishReason.CANCELLED, None)] == ["stop"] * 3
