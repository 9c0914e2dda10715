"""Chat templates rendered with jinja2 the way transformers renders them (a sandboxed environment with
trim_blocks / lstrip_blocks, loop controls, its `tojson`, `raise_exception` and `strftime_now`), so serving a
model does not import transformers (~2 s of the cold start) just to format a conversation. Templates that need
transformers' own extensions (`{% generation %}`) do not compile here; the tokenizer then falls back to it."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


@cache
def compile_template(source: str):
    """The compiled template; raises jinja2's TemplateSyntaxError for what this environment cannot parse."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat(source: str, messages: list[dict[str, str]], special_tokens: dict[str, str],
                tools: list[dict] | None = None) -> str:
    """The prompt text for messages, with the generation prompt added (what the model continues)."""
    return compile_template(source).render(messages=messages, tools=tools, documents=None,
                                           add_generation_prompt=True, **special_tokens)
