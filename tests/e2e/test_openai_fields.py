"""docs/openai-compatibility.md's field tables, walked: they list every request field of the installed `openai`
SDK's completion and chat types, and each row's example, sent to a running server, gets what the row says (200
for supported, a 400 with the row's code for refused)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import httpx
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

DOC = Path(__file__).resolve().parents[2] / "docs" / "openai-compatibility.md"
BASE = {"/v1/completions": {"prompt": "And God said", "max_tokens": 2},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "Who made the light?"}], "max_tokens": 2}}
SECTIONS = {"/v1/completions": "## /v1/completions", "/v1/chat/completions": "## /v1/chat/completions"}


def rows(path: str) -> list[tuple[str, str, dict]]:
    """(field, status, example body) for each row of the path's table."""
    text = DOC.read_text()
    start = text.index(SECTIONS[path] + "\n")
    end = text.index("\n## ", start + 1)
    out = []
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        example = json.loads(cells[2].strip("`"))
        out.append((cells[0].strip("`"), cells[1], example))
    return out


def sdk_fields(module) -> set[str]:
    base = module.CompletionCreateParamsBase
    fields = set(typing.get_type_hints(base, include_extras=False))
    return fields | {"stream"}  # stream is on the streaming / non-streaming subclasses


MODULES = {"/v1/completions": completion_create_params, "/v1/chat/completions": chat_create_params}


@pytest.mark.parametrize("path", list(SECTIONS))
def test_sdk_fields_the_table_does_not_list_are_refused_not_ignored(server, path):
    """The doc was written against openai 3.57, where it lists every field; a newer SDK may add fields it does not
    list yet: those must still be refused by name (400 invalid_request), never accepted and ignored."""
    missing = sorted(sdk_fields(MODULES[path]) - {field for field, _, _ in rows(path)})
    with httpx.Client(base_url=server.http, timeout=60) as client:
        for field in [*missing, "surely_not_a_field"]:
            r = client.post(path, json={**BASE[path], field: "x"})
            assert r.status_code == 400, (field, r.status_code, r.text[:200])
            assert r.json()["error"]["param"] == field, (field, r.text[:200])


def test_each_row_names_its_field_in_its_example():
    for path in SECTIONS:
        for field, status, example in rows(path):
            assert field in example or field == "tool_choice", (path, field)
            assert status == "supported" or re.fullmatch(r"refused: (unsupported|invalid_request)", status), status


@pytest.mark.parametrize("path", list(SECTIONS))
def test_every_row_does_what_the_table_says(server, path):
    failures = []
    with httpx.Client(base_url=server.http, timeout=120) as client:
        for field, status, example in rows(path):
            body = {**BASE[path], **example}
            r = client.post(path, json=body)
            if status == "supported":
                ok = r.status_code == 200
            else:
                code = status.removeprefix("refused: ")
                ok = r.status_code == 400 and r.json()["error"]["code"] == code and r.json()["error"]["param"] == field
            if not ok:
                failures.append(f"{field} {example}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
