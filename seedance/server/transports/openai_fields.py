"""Which request fields /v1/completions and /v1/chat/completions take: each field the `openai` SDK can send is
either implemented or refused with a 400 naming it, and a field no table lists is refused too, so nothing is
accepted and then ignored. docs/openai-compatibility.md is the same table for people (a test holds them together).
"""

from __future__ import annotations

from collections.abc import Callable

from seedance.server.http.http_errors import HttpError

# Implemented by both endpoints (OpenAI's, then the extras vLLM users send).
_COMMON = {"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
           "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "response_format", "user",
           "top_k", "ignore_eos", "stop_token_ids", "priority", "session", "repetition_penalty",
           "guided_json", "guided_regex", "guided_choice", "guided_grammar", "best_of"}
COMPLETION_FIELDS = _COMMON | {"prompt", "prompt_embeds", "echo", "suffix"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
                         "parallel_tool_calls", "safety_identifier", "store", "modalities", "service_tier"}


def _off(value: object) -> bool:
    return value in (None, False, "", [], {})


# Known fields refused unless they ask for nothing: field -> (allowed value?, why not).
_REFUSED: dict[str, tuple[Callable[[object], bool], str]] = {
    "echo": (_off, "echo is not supported"),
    "suffix": (_off, "suffix (insertion) is not supported"),
    "store": (_off, "store is not supported: completions are not stored"),
    "metadata": (_off, "metadata is not supported: completions are not stored"),
    "modalities": (lambda v: v in (None, ["text"]), "only text output is supported (modalities: [\"text\"])"),
    "audio": (_off, "audio output is not supported"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "service_tier other than auto / default is not "
                     "supported"),
    "prediction": (_off, "predicted outputs are not supported"),
    "reasoning_effort": (_off, "reasoning_effort is not supported: the models served here do not reason"),
    "verbosity": (_off, "verbosity is not supported"),
    "web_search_options": (lambda v: v is None, "web search is not supported"),
    "moderation": (_off, "moderation is not supported"),
    "prompt_cache_key": (_off, "prompt_cache_key is not supported: the prefix cache needs no key"),
    "prompt_cache_options": (_off, "prompt_cache_options is not supported: the prefix cache needs no options"),
    "prompt_cache_retention": (_off, "prompt_cache_retention is not supported"),
    "functions": (_off, "functions / function_call are deprecated: use tools / tool_choice"),
    "function_call": (_off, "functions / function_call are deprecated: use tools / tool_choice"),
}
_STREAM_OPTIONS = {"include_usage"}


def check_fields(body: dict, chat: bool) -> None:
    """400 for a field that is not implemented here: `unsupported` for a known one, `invalid_request` for one no
    API defines."""
    known = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name, value in body.items():
        refused = _REFUSED.get(name)
        if refused is not None and not refused[0](value):
            raise HttpError(400, "unsupported", refused[1], name)
        if name not in known and refused is None:
            raise HttpError(400, "invalid_request", f"unknown field {name!r} (docs/openai-compatibility.md lists "
                            "the fields this endpoint takes)", name)
    options = body.get("stream_options")
    if isinstance(options, dict):
        for name, value in options.items():
            if name == "include_obfuscation" and not value:
                continue
            if name not in _STREAM_OPTIONS:
                raise HttpError(400, "unsupported", f"stream_options.{name} is not supported", "stream_options")
