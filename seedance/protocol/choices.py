"""A generate with n > 1 ends with one done for all its choices (docs/protocol.md, "Choices"): this folds the
choices' ends into it. Usage is summed, since every choice is an engine request that reads the prompt (its
cached_tokens then show how much of the prompt the later choices reused); the request's finish_reason is the
gravest of its choices', so a client that reads only that still sees a failure or a cancel."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from seedance.protocol.messages import ChoiceEnd, Done, Usage

_GRAVITY = ("stop", "length", "cancelled", "error")  # a request's finish_reason: its choices' last in this order
_SPLIT = ("text_tokens", "embedding_tokens", "image_tokens")  # a multimodal prompt's split, summed like the rest


def choices_done(request_id: str, ends: Sequence[ChoiceEnd]) -> Done:
    """The request's done: the choices' usage summed, the gravest finish_reason, every end by index."""
    if not ends:
        raise ValueError("a request has at least one choice")
    ends = sorted(ends, key=lambda e: e.index)
    usage = Usage(prompt_tokens=sum(e.usage.prompt_tokens for e in ends),
                  completion_tokens=sum(e.usage.completion_tokens for e in ends),
                  cached_tokens=sum(e.usage.cached_tokens for e in ends))
    for name in _SPLIT:
        parts = [v for e in ends if (v := getattr(e.usage, name)) is not msgspec.UNSET]
        if parts:
            setattr(usage, name, sum(parts))
    finish = max((e.finish_reason for e in ends), key=_GRAVITY.index)
    return Done(id=request_id, finish_reason=finish, usage=usage, choices=list(ends))
