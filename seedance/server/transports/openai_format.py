"""OpenAI wire shapes from engine events: streaming chunks, non-streaming bodies, usage and logprobs.

Pure (no aiohttp, no server state), so the SSE stream and the non-streaming handler build the same objects
and the formatting can be tested without a server."""

from __future__ import annotations

import time
from typing import Any

from seedance.engine.events import FinishReason, TokenEvent


class OpenAIFormatter:
    """Builds completion / chat payloads from engine events."""

    def __init__(self, chat: bool, model: str, request_id: str, tokenizer, index: int = 0) -> None:
        self.chat = chat
        self.index = index  # the choice (n > 1) this formatter's chunks belong to
        self.model = model
        self.id = request_id
        self.created = int(time.time())
        self.tokenizer = tokenizer
        self.text_offset = 0

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer else ""

    def logprobs(self, events: list[TokenEvent], k: int | None) -> dict | None:
        events = [e for e in events if e.token_id >= 0]
        if k is None or not events:
            return None
        if self.chat:
            return {"content": [self._chat_logprob(e) for e in events]}
        tokens = [self._token_text(e.token_id) for e in events]
        offsets = []
        for t in tokens:
            offsets.append(self.text_offset)
            self.text_offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [{self._token_text(t): lp for t, lp in (e.top_logprobs or ())} for e in events]
            if k else None,
            "text_offset": offsets,
        }

    def _chat_logprob(self, e: TokenEvent) -> dict:
        text = self._token_text(e.token_id)
        return {"token": text, "logprob": e.logprob, "bytes": list(text.encode()),
                "top_logprobs": [{"token": (s := self._token_text(t)), "logprob": lp, "bytes": list(s.encode())}
                                 for t, lp in (e.top_logprobs or ())]}

    def chunk(self, text: str, logprobs: dict | None, finish: str | None, first: bool,
              tool_calls: list[dict] | None = None) -> dict:
        """tool_calls: tool_calls delta entries (each with its index; tool_call_parser.py), sent instead of text."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            if finish is not None and not text and not first:
                delta = {}
            if tool_calls is not None:
                delta = {"role": "assistant", "content": None} if first else {}
                delta["tool_calls"] = tool_calls
            choice = {"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [choice]}
        choice = {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice]}

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int,
              final: TokenEvent | None = None) -> dict:
        """final, for a multimodal prompt: prompt_tokens_details also splits it into text, embedding and image
        tokens (OpenAI names text_tokens / image_tokens; embedding_tokens for rows the client sent)."""
        details = {"cached_tokens": cached_tokens}
        if final is not None and (final.num_embedding_tokens or final.num_image_tokens):
            details.update(text_tokens=final.num_text_tokens, embedding_tokens=final.num_embedding_tokens,
                           image_tokens=final.num_image_tokens)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": details}

    def usage_chunk(self, usage: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [],
                "usage": usage}

    def choice(self, text: str, logprobs: dict | None, finish: str, tool_calls: list[dict] | None = None) -> dict:
        """One choice of a non-streaming body."""
        if not self.chat:
            return {"index": self.index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls is not None:
            message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    def body(self, choices: list[dict], usage: dict) -> dict:
        obj = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "usage": usage}

    def full(self, text: str, logprobs: dict | None, finish: str, usage: dict) -> dict:
        return self.body([self.choice(text, logprobs, finish)], usage)


def openai_finish_reason(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"
