"""Loaded by every Python process `scripts/fuzz_trace.py` starts (server, engine core): when FUZZ_TRACE_DIR is
set, record each engine step (start, duration, batch size, tokens) and each step's delivery on the event loop, one
JSON line each, into a file per process. A diagnostic, not part of the server."""

import os

if os.environ.get("FUZZ_TRACE_DIR"):
    import json
    import time

    _out = open(  # noqa: SIM115 - open for the process's life
        os.path.join(os.environ["FUZZ_TRACE_DIR"], f"trace-{os.getpid()}.jsonl"), "a", buffering=1)

    from seedance.engine import engine_front, llm_engine, scheduler

    _schedule = scheduler.Scheduler.schedule
    _last = {"chunks": 0, "tokens": 0}

    def schedule(self, now):
        out = _schedule(self, now)
        _last["chunks"], _last["tokens"] = len(out.chunks), out.num_tokens
        return out

    scheduler.Scheduler.schedule = schedule

    _step = llm_engine.LLMEngine.step

    def step(self, now=None):
        started = time.perf_counter()
        _last["chunks"] = _last["tokens"] = 0
        events = _step(self, now)
        _out.write(json.dumps({"k": "step", "t": started, "d": time.perf_counter() - started,
                               "running": _last["chunks"], "tokens": _last["tokens"],
                               "waiting": len(self.scheduler.waiting), "events": len(events)}) + "\n")
        return events

    llm_engine.LLMEngine.step = step
    _deliver = engine_front.EngineFront._deliver_step

    def deliver(self, events, started, cut=0):
        _out.write(json.dumps({"k": "deliver", "t": time.perf_counter(), "started": started,
                               "events": len(events)}) + "\n")
        return _deliver(self, events, started, cut)

    engine_front.EngineFront._deliver_step = deliver

if os.environ.get("FUZZ_SWITCH_INTERVAL"):  # an experiment: the GIL's switch interval in the server
    import sys

    sys.setswitchinterval(float(os.environ["FUZZ_SWITCH_INTERVAL"]))
