import os
import sys
import threading

import pytest

from seedance.engine.thread_priority import lower_this_thread

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


@linux
def test_it_lowers_the_calling_thread_only():
    before = nice_of(threading.get_native_id())
    seen = {}

    def work():
        seen["done"] = lower_this_thread(5)
        seen["nice"] = nice_of(threading.get_native_id())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"done": True, "nice": min(19, before + 5)}
    assert nice_of(threading.get_native_id()) == before  # the caller's neighbours keep theirs


@linux
def test_zero_changes_nothing_and_it_stops_at_19():
    seen = {}

    def work():
        tid = threading.get_native_id()
        seen["zero"] = (lower_this_thread(0), nice_of(tid))
        seen["far"] = (lower_this_thread(100), nice_of(tid))

    before = nice_of(threading.get_native_id())
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == {"zero": (False, before), "far": (True, 19)}
