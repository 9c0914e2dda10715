"""/v1/realtime's back-pressure and heartbeat: the policy of /v1/stream (protocol/flow.py) fed by the sans-I/O
Realtime core; bytes written, pongs and clocks in, commands and SDK-shaped events out, no socket. The e2e tests
(tests/e2e/test_realtime.py) check the same through a server."""

from __future__ import annotations

import math

from seedance.protocol import CloseCode
from seedance.protocol.flow import PROBE, CloseConnection, SendPing
from seedance.protocol.realtime_connection import (
    CancelResponse,
    PauseResponse,
    ResumeResponse,
    StartResponse,
)
from tests.protocol.test_flow_control import LIMITS  # the same limits as /v1/stream's flow tests
from tests.protocol.test_realtime_connection import Peer, counts, user


def streaming() -> tuple[Peer, StartResponse]:
    peer = Peer(flow=LIMITS)
    peer.send(type="conversation.item.create", item=user("tell a long story"))
    return peer, peer.start()


def test_above_high_water_pauses_the_response_and_holds_the_writer_until_low_water():
    peer, command = streaming()
    assert peer.conn.wrote(90) is None
    assert peer.conn.tick(1.0, buffered_bytes=0) is None  # 90 unread: write
    assert peer.conn.wrote(2000) == PROBE + b"2090"  # past the probe interval: how far has the client read?
    assert peer.conn.tick(1.0, buffered_bytes=0) == LIMITS.recheck_s
    assert peer.conn.commands() == [PauseResponse(command.response_id)]
    assert peer.conn.tick(1.1, buffered_bytes=0) == LIMITS.recheck_s  # still above: paused once, probed once
    assert peer.conn.commands() == []
    assert not peer.conn.receive_pong(b"not a probe")
    assert peer.conn.receive_pong(PROBE + b"1500")  # 590 unread: between the marks, still paused
    assert peer.conn.tick(1.2, buffered_bytes=0) == LIMITS.recheck_s and peer.conn.commands() == []
    assert peer.conn.receive_pong(PROBE + b"2090")  # all read
    assert peer.conn.tick(1.3, buffered_bytes=0) is None
    assert peer.conn.commands() == [ResumeResponse(command.response_id)]
    assert peer.take() == []  # pausing is not on the wire: the client only sees its deltas slow down


def test_the_transport_buffer_counts_when_no_probe_is_answered():
    peer, command = streaming()
    assert peer.conn.tick(0.0, buffered_bytes=5000) == LIMITS.recheck_s
    assert peer.conn.commands() == [PauseResponse(command.response_id)]
    assert peer.conn.tick(0.1, buffered_bytes=50) is None
    assert peer.conn.commands() == [ResumeResponse(command.response_id)]


def test_a_response_that_starts_above_high_water_starts_paused():
    peer = Peer(flow=LIMITS)
    assert peer.conn.tick(0.0, buffered_bytes=5000) == LIMITS.recheck_s
    assert peer.conn.commands() == []  # no response to pause
    peer.send(type="conversation.item.create", item=user("hi"))
    peer.send(type="response.create")
    start, pause = peer.conn.commands()
    assert isinstance(start, StartResponse) and pause == PauseResponse(start.response_id)
    peer.conn.tick(0.1, buffered_bytes=0)
    assert peer.conn.commands() == [ResumeResponse(start.response_id)]


def test_a_barge_in_under_back_pressure_cancels_the_old_response_and_starts_the_new_one_paused():
    peer, old = streaming()
    peer.conn.tick(0.0, buffered_bytes=5000)
    assert peer.conn.commands() == [PauseResponse(old.response_id)]
    peer.send(type="conversation.item.create", item=user("stop"))
    peer.send(type="response.create")
    assert peer.conn.commands() == [CancelResponse(old.response_id)]
    peer.conn.response_ended(old.response_id, "cancelled", counts(5, 0, 0))
    new, pause = peer.conn.commands()
    assert isinstance(new, StartResponse) and pause == PauseResponse(new.response_id)
    peer.conn.tick(0.1, buffered_bytes=0)
    assert peer.conn.commands() == [ResumeResponse(new.response_id)]  # the new one, not the ended one


def test_staying_above_high_water_too_long_sends_an_error_event_then_closes_4001():
    peer, _ = streaming()
    peer.conn.tick(10.0, buffered_bytes=5000)
    peer.conn.commands()
    assert peer.conn.tick(14.9, buffered_bytes=5000) == LIMITS.recheck_s
    assert peer.take() == [] and peer.conn.commands() == []
    assert peer.conn.tick(15.1, buffered_bytes=5000) == math.inf
    (event,) = peer.take()  # validated as the SDK's RealtimeErrorEvent
    assert event["type"] == "error"
    assert (event["error"]["type"], event["error"]["code"]) == ("server_error", "slow_consumer")
    (close,) = peer.conn.commands()
    assert isinstance(close, CloseConnection) and close.code == CloseCode.SLOW_CONSUMER


def test_heartbeat_pings_each_interval_and_closes_4000_after_the_missed_ones():
    peer = Peer(flow=LIMITS)
    assert peer.conn.tick(9.9, 0) is None and peer.conn.commands() == []
    assert peer.conn.tick(10.0, 0) is None
    assert peer.conn.commands() == [SendPing(PROBE + b"0")]
    peer.conn.tick(15.0, 0)
    assert peer.conn.commands() == []  # not due yet
    peer.conn.tick(20.0, 0)
    assert peer.conn.commands() == [SendPing(PROBE + b"0")]
    assert peer.conn.tick(30.0, 0) == math.inf  # two pings unanswered
    (event,) = peer.take()
    assert (event["type"], event["error"]["code"]) == ("error", "heartbeat_timeout")
    assert peer.conn.commands() == [CloseConnection(CloseCode.HEARTBEAT_TIMEOUT, "no pong to 2 pings")]


def test_any_pong_keeps_the_connection_alive():
    peer = Peer(flow=LIMITS)
    for t in (10.0, 20.0, 30.0, 40.0):
        peer.conn.tick(t, 0)
        assert [type(c) for c in peer.conn.commands()] == [SendPing]
        peer.conn.receive_pong(b"")
    assert peer.conn.tick(50.0, 0) is None and peer.take() == []
