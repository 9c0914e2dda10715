"""Flow control in the sans-I/O ServerConnection: credit per request, water marks and probes per connection,
the heartbeat, what a lost connection does to its requests; plain inputs, commands out, no socket. The
e2e tests (tests/e2e/test_websocket.py, test_ws_hardening.py, test_sessions.py) check the same through a
server."""

import json
import math
from dataclasses import dataclass

from seedance.protocol import CloseCode
from seedance.protocol.flow import PROBE, FlowLimits
from seedance.protocol.scopes import ALL_SCOPES
from seedance.protocol.server_connection import (
    CancelRequest,
    CloseConnection,
    DetachRequest,
    PauseRequest,
    ResumeStream,
    SendPing,
    ServerConnection,
)

LIMITS = FlowLimits(high_water_bytes=1000, low_water_bytes=100, slow_consumer_timeout_s=5.0,
                    heartbeat_interval_s=10.0, heartbeat_max_missed=2, recheck_s=0.05)


@dataclass
class Ev:
    token_id: int = 7
    text_delta: str = "x"
    finished: bool = False


def connection(**kw) -> ServerConnection[str]:
    options = {"max_message_bytes": 4096, "max_requests": 8, "scopes": ALL_SCOPES, "flow": LIMITS, "now": 0.0,
               **kw}
    return ServerConnection(**options)


def credit(conn: ServerConnection, request_id: str, n: int) -> None:
    conn.receive_text(json.dumps({"type": "credit", "id": request_id, "n": n}))


def take(conn: ServerConnection, request_id: str, *events: Ev) -> bool:
    """What the writer does for one request: ask, then take (and account for) the events."""
    if not conn.may_take(request_id, bool(events)):
        return False
    conn.receive_events(request_id, list(events))
    return True


# ---- credit ---------------------------------------------------------------------------------------------------
def test_without_credit_every_batch_goes_and_nothing_pauses():
    conn = connection()
    conn.open("a", "h")
    for _ in range(50):
        assert take(conn, "a", Ev(), Ev())
    assert conn.commands() == []


def test_credit_is_spent_one_per_chunk_and_pauses_at_zero():
    conn = connection()
    conn.open("a", "h", credit=2)
    assert take(conn, "a", Ev(), Ev(), Ev())  # one chunk, however many tokens
    assert conn.commands() == []
    assert take(conn, "a", Ev())
    assert conn.commands() == [PauseRequest("a")]  # spent: paused before the next step's tokens
    assert not take(conn, "a", Ev())  # they wait in the stream
    assert conn.commands() == []  # paused once


def test_zero_initial_credit_pauses_at_open_and_a_grant_resumes():
    conn = connection()
    conn.open("a", "h", credit=0)
    assert conn.commands() == [PauseRequest("a")]
    assert not conn.may_take("a", ready=False)
    credit(conn, "a", 3)
    assert conn.commands() == [ResumeStream("a")] and conn.data_to_send() == []
    assert take(conn, "a", Ev())


def test_a_grant_while_credit_is_left_resumes_nothing():
    conn = connection()
    conn.open("a", "h", credit=5)
    credit(conn, "a", 2)
    assert conn.commands() == []
    for _ in range(6):
        assert take(conn, "a", Ev())
    assert conn.commands() == []
    assert take(conn, "a", Ev())  # the seventh chunk spends the last credit
    assert conn.commands() == [PauseRequest("a")]


def test_the_final_batch_does_not_pause_and_an_empty_final_costs_nothing_in_json():
    conn = connection()
    conn.open("a", "h", credit=1)
    assert take(conn, "a", Ev(), Ev(token_id=-1, text_delta="", finished=True))
    assert conn.commands() == []  # it ended: nothing to pause
    conn.open("b", "h", credit=1)
    assert take(conn, "b", Ev(token_id=-1, text_delta="", finished=True))  # done only: no chunk
    assert conn.flows["b"].credit == 1
    conn.open("c", "h", credit=1, binary=True)
    assert take(conn, "c", Ev(token_id=-1, text_delta="", finished=True))  # MTF1: the final frame is a chunk
    assert conn.flows["c"].credit == 0


def test_a_cancelled_request_ends_whatever_its_credit():
    conn = connection()
    conn.open("a", "h", credit=1)
    take(conn, "a", Ev())
    conn.commands()
    assert not conn.may_take("a", ready=True)
    conn.receive_text('{"type": "cancel", "id": "a"}')
    assert conn.commands() == [CancelRequest("a")]
    assert conn.may_take("a", ready=True)  # its done goes out


def test_credit_for_an_unknown_or_ended_request_is_an_error():
    conn = connection()
    conn.open("a", "h", credit=0)
    conn.forget("a")
    credit(conn, "a", 1)
    (body,) = conn.data_to_send()
    assert json.loads(body)["code"] == "unknown_id"
    assert conn.commands() == [PauseRequest("a")]  # from the open only


# ---- water marks --------------------------------------------------------------------------------------------
def test_above_high_water_pauses_the_streams_without_credit_and_holds_the_writer():
    conn = connection()
    conn.open("a", "h")
    conn.open("b", "h", credit=3)
    assert conn.wrote(90) is None
    assert conn.tick(1.0, buffered_bytes=0) is None  # 90 unread: write
    assert conn.wrote(2000) == PROBE + b"2090"  # past the probe interval: how far has the client read?
    assert conn.tick(1.0, buffered_bytes=0) == LIMITS.recheck_s
    assert conn.commands() == [PauseRequest("a")]  # b has explicit credit: its own flow control
    conn.open("c", "h")
    assert conn.commands() == [PauseRequest("c")]  # a request opened meanwhile joins the pause
    assert conn.tick(1.1, buffered_bytes=0) == LIMITS.recheck_s  # still above: no new pause, no new probe
    assert conn.commands() == []


def test_a_probe_acknowledgement_below_low_water_resumes():
    conn = connection()
    conn.open("a", "h")
    conn.open("b", "h", credit=0)
    conn.commands()
    conn.wrote(2000)
    conn.tick(0.0, 0)
    conn.commands()
    assert not conn.receive_pong(b"heartbeat?")  # not a probe: nothing acknowledged
    assert conn.receive_pong(PROBE + b"1950")  # 50 bytes unread
    assert conn.tick(0.1, 0) is None
    assert conn.commands() == [ResumeStream("a")]  # b stays paused for credit


def test_between_the_marks_a_paused_connection_stays_paused_and_probes_again():
    conn = connection()
    conn.open("a", "h")
    conn.wrote(2000)
    conn.tick(0.0, 0)
    conn.commands()
    conn.receive_pong(PROBE + b"1500")  # 500 unread: below high, above low
    assert conn.tick(0.1, 0) == LIMITS.recheck_s and conn.commands() == []
    conn.wrote(10)  # more went out since the last probe
    assert conn.tick(0.2, 0) == LIMITS.recheck_s
    assert conn.commands() == [SendPing(PROBE + b"2010")]


def test_the_transport_buffer_counts_when_no_probe_is_answered():
    conn = connection()
    conn.open("a", "h")
    assert conn.tick(0.0, buffered_bytes=5000) == LIMITS.recheck_s
    assert conn.commands() == [PauseRequest("a")]
    assert conn.tick(0.1, buffered_bytes=50) is None
    assert conn.commands() == [ResumeStream("a")]


def test_a_credit_grant_under_back_pressure_waits_for_low_water():
    conn = connection()
    conn.open("a", "h", credit=0)
    conn.commands()
    conn.tick(0.0, buffered_bytes=5000)
    assert conn.commands() == []  # a has credit: the water marks do not pause it
    credit(conn, "a", 1)
    assert conn.commands() == []  # not resumed while the connection is above high water
    conn.tick(0.1, buffered_bytes=0)
    assert conn.commands() == [ResumeStream("a")]


def test_staying_above_high_water_too_long_closes_as_a_slow_consumer():
    conn = connection()
    conn.open("a", "h")
    conn.tick(10.0, buffered_bytes=5000)
    conn.commands()
    assert conn.tick(14.9, buffered_bytes=5000) == LIMITS.recheck_s
    assert conn.tick(15.1, buffered_bytes=5000) == math.inf
    (command,) = conn.commands()
    assert isinstance(command, CloseConnection) and command.code == CloseCode.SLOW_CONSUMER


# ---- heartbeat ----------------------------------------------------------------------------------------------
def test_heartbeat_pings_each_interval_and_closes_after_the_missed_ones():
    conn = connection()
    assert conn.tick(9.9, 0) is None and conn.commands() == []
    assert conn.tick(10.0, 0) is None
    assert conn.commands() == [SendPing(PROBE + b"0")]
    conn.tick(15.0, 0)
    assert conn.commands() == []  # not due yet
    conn.tick(20.0, 0)
    assert conn.commands() == [SendPing(PROBE + b"0")]
    assert conn.tick(30.0, 0) == math.inf  # two pings unanswered
    assert conn.commands() == [CloseConnection(CloseCode.HEARTBEAT_TIMEOUT, "no pong to 2 pings")]


def test_any_pong_keeps_the_connection_alive():
    conn = connection()
    for t in (10.0, 20.0, 30.0, 40.0):
        conn.tick(t, 0)
        assert [type(c) for c in conn.commands()] == [SendPing]
        conn.receive_pong(b"")
    assert conn.tick(50.0, 0) is None


# ---- the end of the socket, resumes -------------------------------------------------------------------------
def test_a_lost_connection_detaches_live_session_turns_and_cancels_the_rest():
    conn = connection()
    conn.open("plain", "h1")
    conn.open("turn", "h2", session=True)
    conn.open("cancelled-turn", "h3", session=True)
    conn.receive_text('{"type": "cancel", "id": "cancelled-turn"}')
    conn.commands()
    assert conn.connection_lost() == [CancelRequest("plain"), DetachRequest("turn"), CancelRequest("cancelled-turn")]
    assert set(conn.requests) == {"plain", "turn", "cancelled-turn"}  # the adapter reads them, then:
    conn.forget_all()
    assert conn.requests == {} and conn.flows == {}


def test_a_resumed_request_starts_fresh_under_this_connections_marks():
    old, new = connection(), connection()
    old.open("t", "turn", credit=0, session=True)
    assert old.commands() == [PauseRequest("t")]
    # The client comes back on another connection before the old one noticed it was gone.
    assert old.forget("t") == "turn"
    new.open("t", "turn", session=True, resumed=True)
    assert new.commands() == [ResumeStream("t")]
    assert new.may_take("t", ready=True)  # no credit carried over
    assert old.connection_lost() == []  # the old connection no longer owns it


def test_a_resume_onto_a_connection_above_high_water_is_not_resumed_yet():
    conn = connection()
    conn.tick(0.0, buffered_bytes=5000)
    conn.open("t", "turn", session=True, resumed=True)
    assert conn.commands() == [PauseRequest("t")]
    conn.tick(0.1, buffered_bytes=0)
    assert conn.commands() == [ResumeStream("t")]


def test_a_fault_on_one_message_fails_that_message_only():
    conn = connection()
    conn.open("a", "h")
    conn.receive_text('{"type": "cancel", "id": "a"}')
    conn.message_failed()  # the adapter failed carrying it out
    assert conn.commands() == []
    (body,) = conn.data_to_send()
    assert json.loads(body) == {"type": "error", "id": None, "code": "internal",
                                "message": "the server failed on this message"}
    assert "a" in conn.requests
