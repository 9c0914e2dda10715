"""Tools (function calling) on chat completions: the declared functions, tool_choice, the grammar that makes a
call's arguments valid for its function's schema, the prompt the model sees, and the call parsed back.

A call is one JSON object, `{"name": <function>, "arguments": {...}}`, whatever the model: the constrained decoder
makes it valid for the named function's `parameters` schema. tool_choice "required" or a named function forces a
call; "auto" lets the reply be a call or text that does not start with `{`; "none" (or no tools) is plain chat.
Chat templates that take `tools` (Qwen2, Llama 3.1) get them; others (SmolLM2, the built-in model) get a system
message that lists the functions and this format (docs/openai-compatibility.md "Tools").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from seedance.engine.sampling_params import GuidedDecoding
from seedance.server.http.http_errors import HttpError
from seedance.server.transports.tool_call_parser import parse_call

MAX_TOOLS = 64


@dataclass(slots=True)
class ToolChoice:
    tools: list[dict]  # OpenAI's {"type": "function", "function": {"name", "description", "parameters"}}
    mode: str  # "auto", "required" or "named"
    name: str | None = None  # the forced function when mode is "named"

    @property
    def functions(self) -> list[dict]:
        return [t["function"] for t in self.tools]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f["name"] for f in self.functions)

    def call_schema(self) -> dict:
        """The JSON schema a call must match: one of the allowed functions, with its arguments."""
        allowed = [f for f in self.functions if self.mode != "named" or f["name"] == self.name]
        options = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                    "properties": {"name": {"const": f["name"]},
                                   "arguments": f.get("parameters") or {"type": "object"}}} for f in allowed]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def guided(self) -> GuidedDecoding:
        schema = self.call_schema()
        if self.mode == "auto":  # a call (compact JSON, like engine/guided.py), or text that does not open with "{"
            text = json.dumps({**schema, "x-guidance": {"whitespace_flexible": False}})
            return GuidedDecoding("grammar", f"start: call | TEXT\ncall: %json {text}\nTEXT: /[^{{](.|\\n)*/\n")
        # Not key-sorted: the decoder writes properties in the schema's order, and "name" must come first for a
        # streamed call to be announced before its arguments (tool_call_parser.py).
        return GuidedDecoding("json_schema", json.dumps(schema, separators=(",", ":")))

    def system_prompt(self) -> str:
        listed = "\n".join(json.dumps(f, separators=(",", ":")) for f in self.functions)
        rule = {"auto": "You may call one of them", "required": "You must call one of them",
                "named": f"You must call {self.name}"}[self.mode]
        return (f"You can call these functions (JSON Schema parameters):\n{listed}\n{rule}: to call one, reply with "
                'only a JSON object {"name": <function name>, "arguments": <arguments object>}.')


def parse_tool_choice(body: dict) -> ToolChoice | None:
    """tools and tool_choice from a chat body; None when no call is possible (no tools, or tool_choice none)."""
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise HttpError(400, "unsupported", "functions / function_call are deprecated: use tools / tool_choice",
                        "functions")
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none"):
            raise HttpError(400, "invalid_request", "tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise HttpError(400, "invalid_request", f"tools must be a list of at most {MAX_TOOLS} functions", "tools")
    names = set()
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise HttpError(400, "unsupported", 'only tools of type "function" are supported', "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not name or len(name) > 64 or name in names:
            raise HttpError(400, "invalid_request", "each function needs a unique name of 1 to 64 characters", "tools")
        names.add(name)
        if not isinstance(fn.get("parameters", {}), dict) or not isinstance(fn.get("description", ""), str):
            raise HttpError(400, "invalid_request", f"function {name}: parameters must be a JSON schema object",
                            "tools")
    if choice is None or choice == "auto":
        return ToolChoice(tools, "auto")
    if choice == "none":
        return None
    if choice == "required":
        return ToolChoice(tools, "required")
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise HttpError(400, "invalid_request", f"tool_choice names {name!r}, which is not in tools",
                            "tool_choice")
        return ToolChoice(tools, "named", name)
    raise HttpError(400, "invalid_request", 'tool_choice must be "none", "auto", "required" or a named function',
                    "tool_choice")


def tool_calls_of(text: str, choice: ToolChoice | None) -> list[dict] | None:
    """The reply as OpenAI tool_calls (arguments as the model wrote them), or None when it is plain text or a
    call cut short (max_tokens: returned as text, finish_reason "length")."""
    if choice is None:
        return None
    call = parse_call(text, choice.names)
    return None if call is None else [call]


def assistant_call_text(tool_calls: list) -> str:
    """An assistant message's tool_calls sent back, as the text the model produced (the format above)."""
    parts = []
    for call in tool_calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise HttpError(400, "invalid_request", "tool_calls entries need function.name", "messages")
        args = fn.get("arguments", "{}")
        try:
            arguments = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise HttpError(400, "invalid_request", "tool_calls arguments must be JSON", "messages") from None
        parts.append(json.dumps({"name": fn["name"], "arguments": arguments}))
    return "\n".join(parts)
