"""WsChoices, the writer's step for a /v1/stream generate with n > 1, over real engine streams and the real
sans-I/O connection (no socket, no model): chunks carry their choice's index and one seq counter, the id's
credit is spent by every choice's chunks, and one done follows the last choice's end."""

import json

from seedance.engine.async_engine import RequestStream
from seedance.engine.events import FinishReason, TokenEvent
from seedance.protocol.scopes import ALL_SCOPES
from seedance.protocol.server_connection import PauseRequest, ResumeStream, ServerConnection
from seedance.server.transports.ws_choices import WsChoices
from seedance.server.transports.ws_generation import WsGeneration


def choices(n: int) -> WsChoices:
    gens = [WsGeneration("a", RequestStream(None, f"ws1:a.{i}", 4), None, index=i) for i in range(n)]
    return WsChoices("a", gens)


def deliver(group: WsChoices, index: int, token_id: int, text: str, finish: FinishReason | None = None,
            cached: int = 0) -> None:
    stream = group.choices[index].stream
    stream._deliver(TokenEvent(stream.request_id, 0, token_id, text, finish_reason=finish, num_prompt_tokens=4,
                               num_cached_tokens=cached))


def step(conn: ServerConnection, group: WsChoices) -> list[dict]:
    texts: list[bytes] = []
    group.write_ready(conn, texts, [])
    return [json.loads(t) for t in texts]


def connection() -> ServerConnection:
    return ServerConnection(max_message_bytes=4096, max_requests=4, scopes=ALL_SCOPES)


def test_chunks_carry_their_index_and_one_done_ends_every_choice():
    conn, group = connection(), choices(3)
    conn.open("a", group)
    deliver(group, 0, 11, "A")
    deliver(group, 2, 31, "C")
    assert step(conn, group) == [
        {"type": "chunk", "id": "a", "seq": 0, "text": "A", "token_ids": [11], "index": 0},
        {"type": "chunk", "id": "a", "seq": 1, "text": "C", "token_ids": [31], "index": 2},
    ]
    deliver(group, 0, 12, "a", FinishReason.LENGTH)
    deliver(group, 1, 21, "B", FinishReason.STOP, cached=4)
    out = step(conn, group)
    assert [(m["type"], m.get("index"), m.get("seq")) for m in out] == [("chunk", 0, 2), ("chunk", 1, 3)]
    assert not group.finished  # choice 2 is still running: no done yet
    deliver(group, 2, 32, "c", FinishReason.LENGTH, cached=4)
    *chunks, done = step(conn, group)
    assert [(m["index"], m["seq"]) for m in chunks] == [(2, 4)]
    assert group.finished
    assert done == {"type": "done", "id": "a", "finish_reason": "length",
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "cached_tokens": 8},
                    "choices": [
                        {"index": 0, "finish_reason": "length",
                         "usage": {"prompt_tokens": 4, "completion_tokens": 2, "cached_tokens": 0}},
                        {"index": 1, "finish_reason": "stop",
                         "usage": {"prompt_tokens": 4, "completion_tokens": 1, "cached_tokens": 4}},
                        {"index": 2, "finish_reason": "length",
                         "usage": {"prompt_tokens": 4, "completion_tokens": 2, "cached_tokens": 4}}]}
    assert step(conn, group) == []  # the done goes out once


def test_the_ids_credit_is_spent_by_every_choices_chunks():
    conn, group = connection(), choices(3)
    conn.open("a", group, credit=2)
    for i in range(3):
        deliver(group, i, 10 + i, str(i))
    assert [m["index"] for m in step(conn, group)] == [0, 1]  # two credits: two chunks, whichever choice
    assert conn.commands() == [PauseRequest("a")]  # the id pauses: the adapter pauses every choice
    assert step(conn, group) == []
    conn.receive_text(json.dumps({"type": "credit", "id": "a", "n": 5}))
    assert conn.commands() == [ResumeStream("a")]
    assert [(m["index"], m["seq"]) for m in step(conn, group)] == [(2, 2)]


def test_a_cancelled_id_ends_every_choice_with_one_done():
    conn, group = connection(), choices(2)
    conn.open("a", group, credit=0)
    deliver(group, 0, 11, "A")
    conn.receive_text(json.dumps({"type": "cancel", "id": "a"}))
    group.cancelled = True  # what the adapter does on the CancelRequest, besides cancelling every engine id
    assert all(c.cancelled for c in group.choices) and group.engine_ids == ("ws1:a.0", "ws1:a.1")
    deliver(group, 0, -1, "", FinishReason.CANCELLED)
    deliver(group, 1, -1, "", FinishReason.CANCELLED)
    (done,) = step(conn, group)  # the unsent token is dropped, the end goes out whatever the credit
    assert (done["type"], done["finish_reason"]) == ("done", "cancelled")
    assert [c["finish_reason"] for c in done["choices"]] == ["cancelled", "cancelled"]


def test_the_done_waits_for_choices_still_to_join():
    """Choice 0 is live before the others are submitted (they join once it has produced): its end alone is not
    the id's end."""
    conn = connection()
    first = WsGeneration("a", RequestStream(None, "ws1:a.0", 4), None, index=0)
    group = WsChoices("a", [first], pending=1)
    conn.open("a", group)
    deliver(group, 0, 11, "A", FinishReason.LENGTH)
    assert [m["type"] for m in step(conn, group)] == ["chunk"] and not group.finished
    group.choices.append(WsGeneration("a", RequestStream(None, "ws1:a.1", 4), None, index=1))
    group.pending = 0
    deliver(group, 1, 21, "B", FinishReason.LENGTH)
    *_, done = step(conn, group)
    assert done["type"] == "done" and [c["index"] for c in done["choices"]] == [0, 1] and group.finished
