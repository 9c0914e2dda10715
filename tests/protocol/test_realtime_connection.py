"""The Realtime protocol core, strings in and events out, no socket. Every server event it emits is checked against
the installed openai SDK's own type (openai.types.realtime.RealtimeServerEvent, validated by pydantic), so the
shapes are the SDK's, not ours."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from seedance.protocol.realtime_connection import (
    CancelResponse,
    Limits,
    RealtimeConnection,
    StartResponse,
    Usage,
)

SDK_EVENT = TypeAdapter(RealtimeServerEvent)


def counts(prompt: int, completion: int, cached: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def user(text: str, **extra) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


class Peer:
    """Drives a RealtimeConnection; every event out is validated as the SDK's type and kept as a dict."""

    def __init__(self, **kwargs) -> None:
        self.conn = RealtimeConnection("seedance-tiny", id_prefix="t", **kwargs)
        self.events: list[dict] = []
        self.take()

    def send(self, **event) -> list[dict]:
        self.conn.receive_text(json.dumps(event))
        return self.take()

    def take(self) -> list[dict]:
        out = []
        for body in self.conn.data_to_send():
            event = json.loads(body)
            SDK_EVENT.validate_python(event)  # raises on any shape the SDK would not accept
            out.append(event)
        self.events += out
        return out

    def start(self, **response) -> StartResponse:
        self.send(type="response.create", **({"response": response} if response else {}))
        (command,) = self.conn.commands()
        assert isinstance(command, StartResponse)
        return command

    def finish(self, command: StartResponse, *texts: str, finish: str = "stop") -> list[dict]:
        for text in texts:
            self.conn.response_text(command.response_id, text)
        self.conn.response_ended(command.response_id, finish, counts(10, len(texts), 4))
        return self.take()


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_session_created_first_then_a_response_in_the_sdk_order():
    peer = Peer()
    assert kinds(peer.events) == ["session.created"]
    assert peer.events[0]["session"]["model"] == "seedance-tiny"
    assert kinds(peer.send(type="conversation.item.create", item=user("Hi"))) == [
        "conversation.item.added", "conversation.item.done"]
    command = peer.start()
    assert command.messages == [{"role": "user", "content": "Hi"}] and command.in_conversation
    started = peer.take()
    assert kinds(peer.events[-4:]) == ["response.created", "response.output_item.added", "conversation.item.added",
                                       "response.content_part.added"]
    del started
    events = peer.finish(command, "Hel", "lo")
    assert kinds(events) == ["response.output_text.delta", "response.output_text.delta", "response.output_text.done",
                             "response.content_part.done", "response.output_item.done", "conversation.item.done",
                             "response.done"]
    assert events[2]["text"] == "Hello"
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"] == [{"type": "output_text", "text": "Hello"}]
    assert done["usage"]["input_token_details"]["cached_tokens"] == 4
    ids = [e["event_id"] for e in peer.events]
    assert len(set(ids)) == len(ids)  # server event ids are unique


def test_each_response_sends_only_the_new_items_and_instructions_once():
    peer = Peer()
    peer.send(type="session.update", session={"type": "realtime", "instructions": "Be brief.", "temperature": 0,
                                              "max_output_tokens": 9})
    peer.send(type="conversation.item.create", item=user("one"))
    first = peer.start()
    assert first.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}]
    assert (first.temperature, first.max_output_tokens, first.restart) == (0, 9, False)
    peer.finish(first, "A")
    peer.send(type="conversation.item.create", item=user("two"))
    second = peer.start(max_output_tokens=3, temperature=0.5)  # per-response overrides
    assert second.messages == [{"role": "user", "content": "two"}]
    assert (second.max_output_tokens, second.temperature) == (3, 0.5)


def test_usage_splits_a_prompt_with_image_rows_into_image_and_text_tokens():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("Hi"))
    command = peer.start()
    peer.conn.response_ended(command.response_id, "stop", Usage(prompt_tokens=30, completion_tokens=2,
                                                                cached_tokens=5, text_tokens=14, image_tokens=16))
    usage = peer.take()[-1]["response"]["usage"]
    assert usage["input_tokens"] == 30 and usage["total_tokens"] == 32
    assert usage["input_token_details"]["image_tokens"] == 16 and usage["input_token_details"]["text_tokens"] == 14
    assert usage["input_token_details"]["cached_tokens"] == 5


def test_editing_what_the_history_holds_re_renders_the_conversation():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("one", id="u1"))
    peer.finish(peer.start(), "A")
    peer.send(type="conversation.item.create", item=user("two", id="u2"))
    assert kinds(peer.send(type="conversation.item.delete", item_id="u1")) == ["conversation.item.deleted"]
    command = peer.start()
    assert command.restart
    assert command.messages == [{"role": "assistant", "content": "A"}, {"role": "user", "content": "two"}]
    peer.finish(command, "B")
    peer.send(type="conversation.item.create", item=user("three"))
    assert not peer.start().restart  # back to incremental


def test_a_failed_response_leaves_its_input_for_the_next_one():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("one"))
    command = peer.start()
    peer.conn.response_failed_to_start(command.response_id, "invalid_request", "prompt too long")
    events = peer.take()
    assert kinds(events)[0] == "error" and events[-1]["response"]["status"] == "failed"
    assert [i.role for i in peer.conn.items] == ["user"]  # the failed assistant item is gone
    assert peer.start().messages == [{"role": "user", "content": "one"}]


def test_barge_in_cancels_the_active_response_and_starts_the_new_one_after_it_ends():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("tell a long story"))
    old = peer.start()
    peer.conn.response_text(old.response_id, "Once upon")
    peer.send(type="conversation.item.create", item=user("stop, another question"))
    peer.send(type="response.create", event_id="barge")
    assert peer.conn.commands() == [CancelResponse(old.response_id)]  # not started yet: the old one still runs
    peer.send(type="response.create", event_id="third")
    assert peer.events[-1]["error"]["code"] == "conversation_already_has_active_response"
    peer.conn.response_text(old.response_id, "")  # nothing more reaches the client
    peer.conn.response_ended(old.response_id, "cancelled", counts(5, 2, 0))
    events = peer.take()
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "cancelled" and done["status_details"]["reason"] == "client_cancelled"
    assert done["output"][0]["content"][0]["text"] == "Once upon" and done["output"][0]["status"] == "incomplete"
    assert kinds(events)[-4:] == ["response.created", "response.output_item.added", "conversation.item.added",
                                  "response.content_part.added"]
    (new,) = peer.conn.commands()
    assert new.messages == [{"role": "user", "content": "stop, another question"}] and not new.restart


def test_response_cancel_without_a_response_is_an_error_naming_the_event():
    peer = Peer()
    events = peer.send(type="response.cancel", event_id="c1")
    assert events[0]["error"]["code"] == "response_cancel_not_active" and events[0]["error"]["event_id"] == "c1"


def test_truncate_a_text_item_to_nothing_or_refuse_audio_offsets():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("one"))
    peer.finish(peer.start(), "A long answer")
    assistant = peer.conn.items[-1].id
    error = peer.send(type="conversation.item.truncate", event_id="t1", item_id=assistant, content_index=0,
                      audio_end_ms=500)[0]["error"]
    assert (error["code"], error["param"], error["event_id"]) == ("invalid_event", "audio_end_ms", "t1")
    assert kinds(peer.send(type="conversation.item.truncate", item_id=assistant, content_index=0,
                           audio_end_ms=0)) == ["conversation.item.truncated"]
    peer.send(type="conversation.item.create", item=user("two"))
    command = peer.start()
    assert command.restart and command.messages == [{"role": "user", "content": "one"},
                                                    {"role": "user", "content": "two"}]


def test_an_out_of_band_response_leaves_the_conversation_alone():
    peer = Peer()
    peer.send(type="conversation.item.create", item=user("in the conversation"))
    command = peer.start(conversation="none", input=[user("just this")], metadata={"topic": "x"})
    assert not command.in_conversation and command.messages == [{"role": "user", "content": "just this"}]
    assert "conversation.item.added" not in kinds(peer.take())
    events = peer.finish(command, "ok")
    assert "conversation.item.done" not in kinds(events)
    assert events[-1]["response"]["metadata"] == {"topic": "x"}
    assert [i.role for i in peer.conn.items] == ["user"]
    assert peer.start().messages == [{"role": "user", "content": "in the conversation"}]


@pytest.mark.parametrize("event, code, param", [
    ({"type": "conversation.item.create", "item": user("x", id="a" * 65)}, "invalid_event", None),
    ({"type": "conversation.item.create", "item": {"type": "function_call"}}, "unsupported", "item.type"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "tool", "content": []}},
     "invalid_event", "item.role"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}}, "unsupported_content_type",
     "item.content[0]"),
    ({"type": "conversation.item.create", "item": {"type": "message", "role": "assistant", "content": [
        {"type": "input_text", "text": "x"}]}}, "invalid_event", "item.content[0]"),
    ({"type": "conversation.item.create", "item": user("x"), "previous_item_id": "missing"}, "item_not_found",
     "previous_item_id"),
    ({"type": "conversation.item.retrieve", "item_id": "missing"}, "item_not_found", "item_id"),
    ({"type": "response.create", "response": {"output_modalities": ["audio"]}}, "unsupported",
     "response.output_modalities"),
    ({"type": "response.create", "response": {"tools": [{"type": "function", "name": "f"}]}}, "unsupported",
     "response.tools"),
    ({"type": "response.create", "response": {"conversation": "conv_other"}}, "unsupported",
     "response.conversation"),
    ({"type": "session.update", "session": {"type": "transcription"}}, "unsupported", "session.type"),
    ({"type": "session.update", "session": {"temperature": "hot"}}, "invalid_event", None),
    ({"type": "input_audio_buffer.commit"}, "unsupported", "type"),
    ({"type": 7}, "invalid_event", "type"),
    ({"type": "no.such"}, "unknown_event_type", "type"),
])
def test_bad_events_get_one_error_event_with_their_event_id(event, code, param):
    peer = Peer()
    events = peer.send(**event, event_id="bad")
    assert kinds(events) == ["error"]
    error = events[0]["error"]
    assert (error["code"], error["event_id"], error["type"]) == (code, "bad", "invalid_request_error")
    if param is not None:
        assert error["param"] == param
    assert peer.conn.commands() == []


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"text"', ""])
def test_undecodable_text_is_an_error_event(raw):
    peer = Peer()
    peer.conn.receive_text(raw)
    assert kinds(peer.take()) == ["error"]


IMAGE = "data:image/png;base64,iVBORw0KGgo="


def test_input_image_parts_become_image_parts_of_the_message_in_order():
    """A user item's images keep their place among its text (the engine templates them there), are echoed as the
    SDK's input_image parts, and later text appended to the item follows the last image."""
    peer = Peer(limits=Limits(takes_images=True))
    item = {"type": "message", "role": "user", "id": "u1", "status": "in_progress", "content": [
        {"type": "input_text", "text": "Compare"}, {"type": "input_image", "image_url": IMAGE, "detail": "low"},
        {"type": "input_text", "text": "with"}, {"type": "input_image", "image_url": IMAGE}]}
    (added,) = peer.send(type="conversation.item.create", item=item)
    assert [p["type"] for p in added["item"]["content"]] == ["input_text", "input_image", "input_text",
                                                             "input_image"]
    assert added["item"]["content"][1] == {"type": "input_image", "image_url": IMAGE, "detail": "low"}
    peer.conn.commands()
    peer.send(type="conversation.item.append", item_id="u1", text=" please.")
    peer.conn.commands()  # InputChanged: the transport prefills text-only input only
    command = peer.start()
    assert command.messages == [{"role": "user", "content": [
        {"type": "text", "text": "Compare"}, {"type": "image_url", "url": IMAGE}, {"type": "text", "text": "with"},
        {"type": "image_url", "url": IMAGE}, {"type": "text", "text": " please."}]}]
    peer.finish(command, "A")
    peer.send(type="conversation.item.create", item={"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": IMAGE}]})  # an image alone is a message too
    assert peer.start().messages == [{"role": "user", "content": [{"type": "image_url", "url": IMAGE}]}]


@pytest.mark.parametrize("part, role, code, param", [
    ({"type": "input_image", "image_url": "https://example.com/cat.png"}, "user", "invalid_event",
     "item.content[0].image_url"),
    ({"type": "input_image"}, "user", "invalid_event", "item.content[0].image_url"),
    ({"type": "input_image", "image_url": IMAGE}, "system", "invalid_event", "item.content[0]"),
])
def test_a_bad_input_image_is_an_error_event(part, role, code, param):
    peer = Peer(limits=Limits(takes_images=True))
    (error,) = peer.send(type="conversation.item.create", event_id="e1",
                         item={"type": "message", "role": role, "content": [part]})
    assert error["type"] == "error" and (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert peer.conn.items == []


def test_rate_limits_updated_is_the_sdk_event():
    peer = Peer()
    peer.conn.rate_limits([{"name": "requests", "limit": 400, "remaining": 397, "reset_seconds": 0.015}])
    (event,) = peer.take()  # validated as the SDK's RateLimitsUpdatedEvent
    assert event["type"] == "rate_limits.updated" and event["rate_limits"][0]["remaining"] == 397


def test_items_are_bounded_and_ids_unique():
    peer = Peer(limits=Limits(max_items=2))
    peer.send(type="conversation.item.create", item=user("a", id="same"))
    assert peer.send(type="conversation.item.create", item=user("b", id="same"))[0]["error"]["code"] == \
        "duplicate_item_id"
    peer.send(type="conversation.item.create", item=user("b"), previous_item_id="root")
    assert [i.text for i in peer.conn.items] == ["b", "a"]
    assert peer.send(type="conversation.item.create", item=user("c"))[0]["error"]["code"] == "too_many_items"


def test_an_item_arriving_in_pieces_asks_for_prefill_and_completes_on_response_create():
    from seedance.protocol.realtime_connection import InputChanged

    peer = Peer(limits=Limits(max_item_chars=40))
    assert peer.conn.pending_messages() is None
    events = peer.send(type="conversation.item.create", item={**user("Hello"), "id": "u", "status": "in_progress"})
    assert kinds(events) == ["conversation.item.added"] and events[0]["item"]["status"] == "in_progress"
    assert peer.conn.commands() == [InputChanged()]
    assert peer.send(type="conversation.item.append", item_id="u", text=" there") == []
    assert peer.conn.commands() == [InputChanged()]
    assert peer.conn.pending_messages() == [{"role": "user", "content": "Hello there"}]
    error = peer.send(type="conversation.item.append", item_id="u", text="x" * 40, event_id="big")[0]["error"]
    assert (error["code"], error["event_id"]) == ("item_too_large", "big")
    command = peer.start()  # closes the open item first
    assert kinds(peer.events)[-5] == "conversation.item.done" and peer.events[-5]["item"]["status"] == "completed"
    assert command.messages == [{"role": "user", "content": "Hello there"}]
    error = peer.send(type="conversation.item.append", item_id="u", text="late")[0]["error"]
    assert error["code"] == "item_not_open"


def test_input_arriving_during_a_response_is_prefilled_once_it_ends():
    from seedance.protocol.realtime_connection import InputChanged

    peer = Peer()
    peer.send(type="conversation.item.create", item=user("one"))
    command = peer.start()
    peer.send(type="conversation.item.create", item={**user("next"), "status": "in_progress"})
    assert peer.conn.commands() == []  # the history is not final while the response runs
    peer.finish(command, "A")
    assert peer.conn.commands() == [InputChanged()]
    assert peer.conn.pending_messages() == [{"role": "user", "content": "next"}]
    refused = peer.send(type="conversation.item.create", item={**user("x"), "role": "system", "status": "in_progress"})
    assert refused[0]["error"]["param"] == "item.status"


def test_new_session_instructions_join_before_the_next_responses_items():
    peer = Peer()
    peer.send(type="session.update", session={"instructions": "Be brief."})
    peer.send(type="conversation.item.create", item=user("one"))
    peer.finish(peer.start(), "A")
    peer.send(type="conversation.item.create", item=user("two"))
    peer.finish(peer.start(), "B")
    peer.send(type="session.update", session={"instructions": "Now speak like a pirate."})
    peer.send(type="conversation.item.create", item=user("three"))
    assert peer.start().messages == [{"role": "system", "content": "Now speak like a pirate."},
                                     {"role": "user", "content": "three"}]


_texts = st.text(max_size=12)
_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | _texts,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
                     max_leaves=8)
_kinds = st.sampled_from(["session.update", "conversation.item.create", "conversation.item.append",
                          "conversation.item.delete", "conversation.item.truncate", "conversation.item.retrieve",
                          "response.create", "response.cancel", "input_audio_buffer.append", "nope"])
_events = st.fixed_dictionaries({"type": _kinds}, optional={
    "event_id": _texts, "item_id": st.sampled_from(["u1", "x", ""]), "text": _texts, "done": st.booleans(),
    "content_index": st.integers(-1, 2), "audio_end_ms": st.integers(-1, 2), "response_id": _texts,
    "previous_item_id": st.sampled_from(["u1", "root", "x"]),
    "item": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["message", "function_call"]), "id": st.sampled_from(["u1", "u2"]),
        "role": st.sampled_from(["user", "assistant", "system", "tool"]),
        "status": st.sampled_from(["in_progress", "completed"]),
        "content": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text",
                                                                            "input_image"])},
                                                  optional={"text": _texts, "image_url": st.sampled_from(
                                                      [IMAGE, "x"]), "detail": st.sampled_from(["low", "odd"])}),
                                   max_size=2)}),
    "session": st.dictionaries(st.sampled_from(["instructions", "temperature", "max_output_tokens", "tools",
                                                "output_modalities", "type"]), _json, max_size=3),
    "response": st.dictionaries(st.sampled_from(["instructions", "max_output_tokens", "conversation", "input",
                                                 "metadata", "temperature"]), _json, max_size=3),
})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_events, _json), max_size=12), st.lists(st.sampled_from(["stop", "cancelled", "error"]),
                                                                  max_size=12))
def test_any_event_sequence_gives_sdk_shaped_events_and_never_raises(events, finishes):
    """Whatever the client sends, in whatever order, with the engine ending responses in any way: the connection
    answers only with events the SDK accepts, and commands stay consistent (one response at a time)."""
    peer = Peer(limits=Limits(takes_images=len(events) % 2 == 1))
    for event, finish in itertools.zip_longest(events, finishes):
        if event is not None:
            peer.conn.receive_text(json.dumps(event))
        peer.take()
        for command in peer.conn.commands():
            if isinstance(command, StartResponse):
                assert peer.conn.active is not None and peer.conn.active.id == command.response_id
        if finish is not None and peer.conn.active is not None:
            peer.conn.response_text(peer.conn.active.id, "x")
            peer.conn.response_ended(peer.conn.active.id, finish, counts(3, 1, 0))
            peer.take()
