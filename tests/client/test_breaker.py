"""Every transition of the circuit breaker, on a fake clock."""

from seedance.client.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CircuitBreaker, Clock, list]:
    clock, seen = Clock(), []
    return CircuitBreaker("ws://a", clock=clock, on_transition=seen.append), clock, seen


def test_three_consecutive_failures_half_open_it_and_a_success_in_between_resets():
    b, _, seen = make()
    b.record_failure("timeout")
    b.record_failure("timeout")
    b.record_success()
    b.record_failure("timeout")
    b.record_failure("timeout")
    assert b.state is BreakerState.CLOSED
    b.record_failure("timeout")
    assert b.state is BreakerState.HALF_OPEN and seen[-1].reason.startswith("3 consecutive failures")


def test_half_open_opens_above_80_percent_failures_and_closes_after_successes():
    b, _, _ = make()
    for _ in range(3):
        b.record_failure()
    for outcome in [True, True, True, True, False]:  # 4/5 = 80%: not above
        b.record_failure() if outcome else b.record_success()
    assert b.state is BreakerState.HALF_OPEN
    b.record_failure()  # 5/6 > 80%
    assert b.state is BreakerState.OPEN
    c, _, _ = make()
    for _ in range(3):
        c.record_failure()
    for _ in range(5):
        c.record_success()
    assert c.state is BreakerState.CLOSED


def test_open_rejects_until_a_probe_is_due_and_probes_back_off_exponentially():
    b, clock, seen = make()
    for _ in range(3):
        b.record_failure()
    for _ in range(5):
        b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.allow() and b.calls["rejected"] == 1
    clock.now = 0.5
    assert b.allow()  # the first probe, after 0.5 s
    b.record_failure()
    clock.now = 1.4
    assert not b.allow()  # the next one waits 1 s more
    clock.now = 1.5
    assert b.allow()
    b.record_failure()
    assert b.next_probe_at == 1.5 + 2.0
    clock.now = 3.5
    assert b.allow()
    b.record_success()  # recovered: half-open, then closed after successes
    assert b.state is BreakerState.HALF_OPEN
    for _ in range(5):
        b.record_success()
    assert b.state is BreakerState.CLOSED
    assert [(t.old, t.new) for t in seen] == [
        ("closed", "half_open"), ("half_open", "open"), ("open", "half_open"), ("half_open", "closed")]
