"""A thread's own CPU priority: work beside the engine's step loop (an embeddings forward, a grammar compile) runs
nicer than the loop, so on a busy machine the kernel gives the steps every stream waits on the CPU first."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_thread(by: int) -> bool:
    """Raise the calling thread's nice value by `by` (at most to 19). Linux only: there a nice value is a thread's
    own (setpriority on its thread id); elsewhere it would be the whole process's, so nothing is done. Raising
    one's own nice value needs no privilege. True when it was done."""
    if by <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except OSError as err:  # a sandbox that forbids it: the thread runs at the loop's priority
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, err)
        return False
    return True
