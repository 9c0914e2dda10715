"""The sans-I/O ServerConnection: strings in, messages and commands out, no socket. The e2e tests
(tests/e2e/test_websocket.py, test_ws_hardening.py, test_security.py) check the same rules through a server."""

import json

import pytest

from seedance.protocol import CloseCode, decode_server_messages
from seedance.protocol import errors as codes
from seedance.protocol.scopes import ALL_SCOPES, SCOPE_GENERATE
from seedance.protocol.server_connection import (
    CancelRequest,
    CloseConnection,
    Reauthenticate,
    Refused,
    ResumeRequest,
    ServerConnection,
    SetPriority,
    Submit,
)


def connection(**kw) -> ServerConnection[str]:
    options = {"max_message_bytes": 4096, "max_requests": 2, "scopes": ALL_SCOPES, **kw}
    return ServerConnection(**options)


def sent(conn: ServerConnection) -> list[dict]:
    """Every message queued, as JSON objects (an array message counts as its items, in order)."""
    out = []
    for body in conn.data_to_send():
        value = json.loads(body)
        out.extend(value if isinstance(value, list) else [value])
    return out


def gen(request_id: str = "a", **fields) -> str:
    return json.dumps({"type": "generate", "id": request_id, "prompt": "x", **fields})


def test_a_generate_asks_the_adapter_to_submit_it_and_sends_nothing():
    conn = connection()
    conn.receive_text(gen("a", max_tokens=3))
    commands = conn.commands()
    assert len(commands) == 1 and isinstance(commands[0], Submit)
    assert commands[0].message.id == "a" and commands[0].message.max_tokens == 3
    assert conn.data_to_send() == [] and conn.commands() == []  # outputs are taken once


def test_a_refusal_is_error_then_done_in_one_message_and_is_recorded():
    conn = connection()
    conn.refuse("a", codes.OVERLOADED, "busy")
    (body,) = conn.data_to_send()
    assert body.startswith(b"[")
    error, done = decode_server_messages(body)
    assert (error.id, error.code, error.message) == ("a", "overloaded", "busy")
    assert (done.id, done.finish_reason, done.usage.completion_tokens) == ("a", "error", 0)
    assert conn.commands() == [Refused("a", "overloaded")]


@pytest.mark.parametrize("text", [
    '{"type": "generate", "id": "a", "max_tokens": 0, "prompt": "x"}',  # out of range
    '{"type": "generate", "id": "a"}',  # no prompt
    '{"type": "generate", "id": "a", "prompt": "x", "temperature": "hot"}',
])
def test_a_malformed_generate_with_an_id_is_refused(text):
    conn = connection()
    conn.receive_text(text)
    messages = sent(conn)
    assert [m["type"] for m in messages] == ["error", "done"]
    assert messages[0]["id"] == messages[1]["id"] == "a" and messages[1]["finish_reason"] == "error"
    assert messages[0]["code"] in codes.ERROR_CODES
    assert conn.commands() == [Refused("a", messages[0]["code"])]


@pytest.mark.parametrize("text", ["{not json", '{"type": "fly"}', '{"type": "cancel"}', "[]",
                                  '{"type": "generate", "max_tokens": 0}'])
def test_other_malformed_messages_get_an_error_only(text):
    conn = connection()
    conn.receive_text(text)
    (message,) = sent(conn)
    assert message["type"] == "error" and message["code"] in codes.ERROR_CODES
    assert conn.commands() == []


def test_a_malformed_generate_reusing_an_active_id_is_not_refused_under_that_id():
    conn = connection()
    conn.open("a", "handle-a")
    conn.receive_text('{"type": "generate", "id": "a", "max_tokens": 0, "prompt": "x"}')
    (message,) = sent(conn)  # a done{a} would end the live request "a" for the client
    assert message["type"] == "error" and message["id"] == "a"


def test_an_oversized_message_is_an_error():
    conn = connection(max_message_bytes=64)
    conn.receive_text(gen("a", prompt="x" * 100))
    (message,) = sent(conn)
    assert message["type"] == "error" and message["code"] == codes.MESSAGE_TOO_LARGE


def test_duplicate_ids_among_active_requests_are_errors_and_free_again_after_the_end():
    conn = connection()
    conn.receive_text(gen("a"))
    conn.commands()
    conn.open("a", "handle-a")
    conn.receive_text(gen("a"))
    conn.receive_text(json.dumps({"type": "resume", "session": "s", "id": "a"}))
    assert [(m["type"], m["code"]) for m in sent(conn)] == [("error", "duplicate_id")] * 2
    assert conn.commands() == []
    assert conn.forget("a") == "handle-a"
    conn.receive_text(gen("a"))
    assert isinstance(conn.commands()[0], Submit)


def test_the_concurrency_limit_refuses_the_request_beyond_it():
    conn = connection(max_requests=2)
    conn.open("a", "1")
    conn.open("b", "2")
    conn.receive_text(gen("c"))
    messages = sent(conn)
    assert [(m["type"], m.get("code")) for m in messages] == [("error", "too_many_requests"), ("done", None)]
    assert "at most 2 concurrent requests" in messages[0]["message"]
    conn.forget("a")
    conn.receive_text(gen("c"))
    assert [type(c) for c in conn.commands()] == [Refused, Submit]


def test_a_draining_server_refuses_new_generates():
    draining = False
    conn = connection(draining=lambda: draining)
    draining = True
    conn.receive_text(gen("a"))
    messages = sent(conn)
    assert [m["type"] for m in messages] == ["error", "done"] and messages[0]["code"] == "overloaded"


def test_control_messages_need_an_active_request():
    conn = connection()
    for text in ('{"type": "cancel", "id": "x"}', '{"type": "credit", "id": "x", "n": 2}',
                 '{"type": "priority", "id": "x", "priority": 1}'):
        conn.receive_text(text)
    assert [(m["id"], m["code"]) for m in sent(conn)] == [("x", "unknown_id")] * 3
    assert conn.commands() == []
    conn.open("x", "h")
    for text in ('{"type": "cancel", "id": "x"}', '{"type": "credit", "id": "x", "n": 2}',
                 '{"type": "priority", "id": "x", "priority": 1}'):
        conn.receive_text(text)
    assert conn.commands() == [CancelRequest("x"), SetPriority("x", 1)]  # credit is the protocol's own
    assert sent(conn) == []


def test_ping_is_answered_with_its_timestamp():
    conn = connection()
    conn.receive_text('{"type": "ping", "ts": 12.5}')
    conn.receive_text('{"type": "ping"}')
    assert sent(conn) == [{"type": "pong", "ts": 12.5}, {"type": "pong", "ts": None}]


def test_binary_client_messages_are_unsupported():
    conn = connection()
    conn.receive_binary()
    assert [(m["type"], m["code"]) for m in sent(conn)] == [("error", "unsupported")]


def test_scopes_per_message():
    conn = connection(scopes=frozenset({SCOPE_GENERATE}))
    conn.receive_text(gen("a", logprobs=2))  # logprobs needs its scope: refused, with its done
    conn.receive_text(gen("b", priority=-1))  # ahead of the default needs priority:high
    conn.open("c", "h")
    conn.receive_text('{"type": "priority", "id": "c", "priority": -5}')  # an error only (c lives on)
    conn.receive_text('{"type": "priority", "id": "c", "priority": 5}')  # lower urgency is free
    conn.receive_text('{"type": "cancel", "id": "c"}')  # control of one's own request is free
    messages = sent(conn)
    assert [(m["type"], m["id"], m.get("code")) for m in messages] == [
        ("error", "a", "forbidden"), ("done", "a", None), ("error", "b", "forbidden"), ("done", "b", None),
        ("error", "c", "forbidden")]
    assert "needs scope 'logprobs'" in messages[0]["message"]
    assert "needs scope 'priority:high'" in messages[2]["message"]
    assert conn.commands() == [Refused("a", "forbidden"), Refused("b", "forbidden"), SetPriority("c", 5),
                               CancelRequest("c")]


def test_a_connection_without_the_generate_scope_cannot_generate_or_resume():
    conn = connection(scopes=frozenset())
    conn.receive_text(gen("a"))
    conn.receive_text(json.dumps({"type": "resume", "session": "s", "id": "r"}))
    assert [(m["type"], m["id"]) for m in sent(conn)] == [("error", "a"), ("done", "a"), ("error", "r")]


def test_reauth_is_handed_to_the_adapter_and_its_answer_renews_the_scopes():
    conn = connection(scopes=frozenset(), token_auth=True)
    conn.receive_text('{"type": "reauth", "token": "t0k3n"}')
    assert conn.commands() == [Reauthenticate("t0k3n")] and sent(conn) == []
    conn.reauthenticated(frozenset({"logprobs", "generate"}), 1234.0)
    assert sent(conn) == [{"type": "authenticated", "expires_at": 1234.0, "scopes": ["generate", "logprobs"]}]
    conn.receive_text(gen("a", logprobs=1))  # allowed now
    assert isinstance(conn.commands()[0], Submit)
    conn.reauth_refused("signature does not verify")
    assert sent(conn) == [{"type": "error", "id": None, "code": "unauthorized",
                           "message": "reauth refused: signature does not verify"}]


def test_reauth_without_bearer_tokens_is_unsupported():
    conn = connection(token_auth=False)
    conn.receive_text('{"type": "reauth", "token": "t"}')
    assert [(m["type"], m["code"]) for m in sent(conn)] == [("error", "unsupported")]
    assert conn.commands() == []


def test_resume_is_handed_to_the_adapter():
    conn = connection()
    conn.receive_text(json.dumps({"type": "resume", "session": "s", "id": "r", "last_seq": 4}))
    (command,) = conn.commands()
    assert isinstance(command, ResumeRequest)
    assert (command.message.session, command.message.id, command.message.last_seq) == ("s", "r", 4)


def test_close_is_a_command():
    conn = connection()
    conn.close(CloseCode.FORBIDDEN, "another subject")
    assert conn.commands() == [CloseConnection(CloseCode.FORBIDDEN, "another subject")]
