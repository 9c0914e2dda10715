"""The sampling side of an OpenAI request body: field types and ranges, penalties, logit_bias, n, and structured
output (response_format, vLLM's guided_* extras) as SamplingParams. Every field the endpoint takes is listed in
docs/openai-compatibility.md; a bad value is a 400 naming the field, before anything reaches the engine."""

from __future__ import annotations

import json
from typing import Any

from seedance.engine.sampling_params import MAX_LOGIT_BIAS, GuidedDecoding, SamplingParams
from seedance.server.http.http_errors import HttpError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the range of the same fields in a WebSocket generate
MAX_N = 16  # choices per request (n); each is an engine request of its own

_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "an object"}
_JSON_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def get_field(body: dict, name: str, kinds: tuple[type, ...], default: Any = None,
              int_range: tuple[int, int] = (INT32_MIN, INT32_MAX)) -> Any:
    """body[name] if it has one of the JSON types `kinds` (null or absent: default), else a 400 naming the field.
    JSON integers have no size limit: one outside int_range (for an integer field) or beyond a double (for a
    number field: a 400-digit temperature) is a 400 too, before float() or torch could fail on it."""
    value = body.get(name)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        expected = _KIND_NAMES[float] if float in kinds else " or ".join(_KIND_NAMES[k] for k in kinds)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise HttpError(400, "invalid_request", f"{name} must be {expected}, got {got}", name)
    if isinstance(value, int) and not isinstance(value, bool):
        in_range = abs(value) <= 2**1023 if float in kinds else int_range[0] <= value <= int_range[1]
        if not in_range:
            raise HttpError(400, "invalid_request", f"{name} is out of range", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = float(get_field(body, name, (int, float), default))
    if not (low < value if low_open else low <= value) or value > high:
        bracket = "(" if low_open else "["
        raise HttpError(400, "invalid_request", f"{name} must be in {bracket}{low:g}, {high:g}]", name)
    return value


def choices_count(body: dict) -> int:
    n = get_field(body, "n", (int,), 1)
    if not 1 <= n <= MAX_N:
        raise HttpError(400, "invalid_request", f"n must be in [1, {MAX_N}]", "n")
    if get_field(body, "best_of", (int,), n) != n:
        raise HttpError(400, "unsupported", "best_of other than n is not supported", "best_of")
    return n


def logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's {"token id": bias}: JSON keys are strings."""
    raw = get_field(body, "logit_bias", (dict,), {})
    if len(raw) > MAX_LOGIT_BIAS:
        raise HttpError(400, "invalid_request", f"logit_bias has more than {MAX_LOGIT_BIAS} entries", "logit_bias")
    out: dict[int, float] = {}
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit()) or len(key) > 9:
            raise HttpError(400, "invalid_request", f"logit_bias keys are token ids, got {key!r}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise HttpError(400, "invalid_request", "logit_bias values must be numbers in [-100, 100]", "logit_bias")
        out[int(key)] = float(value)
    return out


def _schema_text(schema: Any, name: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError:
            raise HttpError(400, "invalid_request", f"{name} must be a JSON schema", name) from None
    if not isinstance(schema, (dict, bool)):
        raise HttpError(400, "invalid_request", f"{name} must be a JSON schema (an object)", name)
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def guided_decoding(body: dict) -> GuidedDecoding | None:
    """response_format, or one of vLLM's guided_json / guided_regex / guided_choice / guided_grammar."""
    found: list[tuple[str, GuidedDecoding]] = []
    fmt = get_field(body, "response_format", (dict,))
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            found.append(("response_format", GuidedDecoding("json_object")))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
                raise HttpError(400, "invalid_request", "response_format.json_schema must be an object with a name",
                                "response_format")
            strict = get_field(spec, "strict", (bool,), False)
            schema = spec.get("schema", {})
            found.append(("response_format", GuidedDecoding("json_schema", _schema_text(schema, "response_format"),
                                                            strict)))
        elif kind != "text":
            raise HttpError(400, "invalid_request", "response_format.type must be text, json_object or json_schema",
                            "response_format")
    if body.get("guided_json") is not None:
        found.append(("guided_json", GuidedDecoding("json_schema", _schema_text(body["guided_json"], "guided_json"))))
    if (regex := get_field(body, "guided_regex", (str,))) is not None:
        found.append(("guided_regex", GuidedDecoding("regex", regex)))
    if (choice := get_field(body, "guided_choice", (list,))) is not None:
        if not choice or not all(isinstance(c, str) and c for c in choice):
            raise HttpError(400, "invalid_request", "guided_choice must be a list of non-empty strings",
                            "guided_choice")
        found.append(("guided_choice", GuidedDecoding("choice", json.dumps(choice))))
    if (grammar := get_field(body, "guided_grammar", (str,))) is not None:
        found.append(("guided_grammar", GuidedDecoding("grammar", grammar)))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise HttpError(400, "invalid_request", f"give one output constraint, not {names}", found[1][0])
    return found[0][1] if found else None


def sampling_params(body: dict, max_tokens_default: int | None) -> SamplingParams:
    """The fields completions and chat completions share."""
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = stop
    else:
        raise HttpError(400, "invalid_request", "stop must be a string or a list of strings", "stop")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = get_field(body, name, (int,), max_tokens_default)
    seed = get_field(body, "seed", (int,), int_range=(INT64_MIN, INT64_MAX))  # a seed torch cannot take fails a step
    stop_token_ids = get_field(body, "stop_token_ids", (list,), [])
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in stop_token_ids):
        raise HttpError(400, "invalid_request", "stop_token_ids must be a list of token ids (integers >= 0)",
                        "stop_token_ids")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(get_field(body, "temperature", (int, float), 1.0)),
        top_p=float(get_field(body, "top_p", (int, float), 1.0)),
        top_k=int(get_field(body, "top_k", (int,), 0)),
        seed=seed,
        stop=stops,
        stop_token_ids=list(stop_token_ids),
        ignore_eos=bool(get_field(body, "ignore_eos", (bool,), False)),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
        logit_bias=logit_bias(body),
        guided=guided_decoding(body),
    )
