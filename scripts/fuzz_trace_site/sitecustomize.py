"""Loaded by every Python process `scripts/fuzz_trace.py` starts (server, engine core): when FUZZ_TRACE_DIR is
set, record, one JSON line each, into a file per process:

- `step`: each engine step (start, wall duration, the process's CPU seconds in it, batch size, tokens); the CPU
  seconds tell a step that computed for long from one whose process was waiting for a core;
- `loop`: each engine-core loop turn's parts that are not the step (reading and applying commands, sending the
  Step frame) when they took over 1 ms, with the number of commands;
- `apply`: each command the core applied that took over 1 ms (its type, whether guided, its CPU seconds);
- `add` (core), `canary_encode`, `canary_submit` (gateway): when each request was admitted in the core, and the
  canary's tokenization (on the tokenizer thread) and submit (until the core admitted it);
- `deliver`: each step's delivery on the gateway's event loop;
- `lag`: the gateway's event-loop lag, a probe sleeping 2 ms at a time, each overshoot over 3 ms;
- `gc`: every garbage collection over 0.5 ms (generation, duration), in both processes.

A diagnostic, not part of the server."""

import os

if os.environ.get("FUZZ_TRACE_DIR"):
    import gc
    import json
    import time

    _out = open(  # noqa: SIM115 - open for the process's life
        os.path.join(os.environ["FUZZ_TRACE_DIR"], f"trace-{os.getpid()}.jsonl"), "a", buffering=1)
    _pid = os.getpid()
    if os.environ.get("FUZZ_TRACE_READ_TURN_S"):  # A/B of the readers' turn (3600: a burst never yields)
        from seedance.server.transports import read_turn

        read_turn.READ_TURN_S = float(os.environ["FUZZ_TRACE_READ_TURN_S"])

    def _write(rec: dict) -> None:
        if os.getpid() == _pid:  # not in a forked child
            _out.write(json.dumps(rec) + "\n")

    _gc_started = [0.0, 0.0]

    def _gc(phase, info):
        if phase == "start":
            if info["generation"] == 2 and os.environ.get("FUZZ_TRACE_CENSUS"):
                sizes = [len(gc.get_objects(g)) for g in range(3)]
                _write({"k": "gc2_sizes", "t": time.perf_counter(), "sizes": sizes})
            _gc_started[:] = time.perf_counter(), time.thread_time()
        else:
            d = time.perf_counter() - _gc_started[0]
            if d > 0.0005:
                _write({"k": "gc", "t": _gc_started[0], "d": d, "cpu": time.thread_time() - _gc_started[1],
                        "gen": info["generation"], "collected": info["collected"]})

    gc.callbacks.append(_gc)

    from seedance.engine import core_process, engine_front, llm_engine, scheduler

    _schedule = scheduler.Scheduler.schedule
    _last = {"chunks": 0, "tokens": 0, "prefill": 0}

    _phase = {}

    def _schedstat():  # this thread's seconds on a CPU and waiting on a run queue (the kernel's schedstat)
        try:
            with open("/proc/thread-self/schedstat") as f:
                run, wait, _ = f.read().split()
            return int(run) / 1e9, int(wait) / 1e9
        except (OSError, ValueError):
            return 0.0, 0.0

    def _phased(name, original):  # wall seconds of one part of the step, summed into the step's record
        def wrapper(*args, **kw):
            started = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                _phase[name] = _phase.get(name, 0.0) + time.perf_counter() - started
        return wrapper

    def schedule(self, now):
        started = time.perf_counter()
        out = _schedule(self, now)
        _phase["schedule"] = time.perf_counter() - started
        _last["flags"] = sorted({f for c in out.chunks for f in _flags(c.seq.params)})
        _last["chunks"], _last["tokens"] = len(out.chunks), out.num_tokens
        _last["prefill"] = sum(c.num_tokens for c in out.chunks if c.num_tokens > 1)
        return out

    scheduler.Scheduler.schedule = schedule

    def _flags(p):
        out = []
        for name in ("guided", "logprobs", "logit_bias", "seed"):
            if getattr(p, name, None):
                out.append(name)
        if getattr(p, "n", 1) not in (None, 1):
            out.append("n")
        if any(getattr(p, n, 0) not in (0, 0.0, 1, 1.0, None) for n in ("presence_penalty", "frequency_penalty",
                                                                       "repetition_penalty")):
            out.append("penalty")
        return out

    from seedance.engine import model_runner
    from seedance.engine import sampler as _sampler_mod

    model_runner.TorchModelRunner.prepare = _phased("prepare", model_runner.TorchModelRunner.prepare)
    _sampler_mod.Sampler.__call__ = _phased("sample", _sampler_mod.Sampler.__call__)
    _exec = model_runner.TorchModelRunner.execute
    model_runner.TorchModelRunner.execute = _phased("execute", _exec)

    _step = llm_engine.LLMEngine.step

    def step(self, now=None):
        import resource

        started, cpu, tcpu = time.perf_counter(), time.process_time(), time.thread_time()
        flt = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        wait0 = _schedstat()[1]
        _last["chunks"] = _last["tokens"] = _last["prefill"] = 0
        _last["flags"] = []
        _phase.clear()
        events = _step(self, now)
        _write({"k": "step", "t": started, "d": time.perf_counter() - started, "cpu": time.process_time() - cpu,
                "thread_cpu": time.thread_time() - tcpu,
                "minflt": resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - flt,
                "runq_wait": _schedstat()[1] - wait0,
                "phases": {k: round(v, 5) for k, v in _phase.items()}, "flags": _last["flags"],
                "running": _last["chunks"], "tokens": _last["tokens"], "prefill": _last["prefill"],
                "waiting": len(self.scheduler.waiting), "events": len(events)})
        return events

    llm_engine.LLMEngine.step = step

    _apply = core_process.CoreLoop.apply
    _applied = [0]

    def apply(self, gateway, command):
        _applied[0] += 1
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return _apply(self, gateway, command)
        finally:
            d = time.perf_counter() - started
            if type(command).__name__ == "Add":
                _write({"k": "add", "t": started, "d": d, "id": command.request_id})
            if d > 0.001:
                kind = type(command).__name__
                if kind == "Add":
                    kind += "+guided" if command.params.guided is not None else ""
                    kind += "+embeds" if command.embeds is not None else ""
                _write({"k": "apply", "t": started, "d": d, "cpu": time.process_time() - cpu, "what": kind,
                        "tokens": len(getattr(command, "token_ids", ()) or ())})

    core_process.CoreLoop.apply = apply

    def _beside_timed(kind, original):  # work on the core's beside threads: when, how long, its thread's CPU
        def wrapper(*args, **kw):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kw)
            finally:
                _write({"k": "beside", "what": kind, "t": started, "d": time.perf_counter() - started,
                        "cpu": time.thread_time() - cpu})
        return wrapper

    core_process.mean_pooled_embeddings = _beside_timed("embed", core_process.mean_pooled_embeddings)

    def _timed(name, original):
        def wrapper(self, *args, **kw):
            started, cpu, n = time.perf_counter(), time.process_time(), _applied[0]
            try:
                return original(self, *args, **kw)
            finally:
                d = time.perf_counter() - started
                if d > 0.001 and not (name == "read" and args and args[0] is None):  # None: idle, blocking
                    _write({"k": "loop", "part": name, "t": started, "d": d, "cpu": time.process_time() - cpu,
                            "commands": _applied[0] - n})
        return wrapper

    core_process.CoreLoop.read_commands = _timed("read", core_process.CoreLoop.read_commands)
    core_process.CoreLoop.send = _timed("send", core_process.CoreLoop.send)

    # Every step's events pass _queue_step on the loop (thread mode through _deliver_step, process mode straight
    # from the core's socket reader, its listeners woken after the read).
    _deliver = engine_front.EngineFront._queue_step

    def deliver(self, events, started, cut=0):
        _write({"k": "deliver", "t": time.perf_counter(), "started": started, "events": len(events)})
        return _deliver(self, events, started, cut)

    engine_front.EngineFront._queue_step = deliver

    CANARY_PROMPT = "And God said unto Moses,"
    _encode = engine_front.EngineFront._encode

    def encode(self, request):
        started = time.perf_counter()
        try:
            return _encode(self, request)
        finally:
            if request.prompt == CANARY_PROMPT:
                _write({"k": "canary_encode", "t": started, "d": time.perf_counter() - started})

    engine_front.EngineFront._encode = encode

    from seedance.engine import process_engine

    _submit = process_engine.ProcessEngine.submit

    async def submit(self, request):
        started = time.perf_counter()
        stream = await _submit(self, request)
        if request.prompt == CANARY_PROMPT:
            _write({"k": "canary_submit", "t": started, "d": time.perf_counter() - started,
                    "id": self.prefix + stream.request_id})
        return stream

    process_engine.ProcessEngine.submit = submit

    _front_init = engine_front.EngineFront.__init__

    def front_init(self, *args, **kw):
        _front_init(self, *args, **kw)
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def census():  # what the gateway's collector has to walk (FUZZ_TRACE_CENSUS=1; it stalls the loop)
            from collections import Counter

            while True:
                await asyncio.sleep(5)
                objs = gc.get_objects(2)
                top = Counter(type(o).__name__ for o in objs).most_common(12)
                _write({"k": "census", "t": time.perf_counter(), "gen2": len(objs), "frozen": gc.get_freeze_count(),
                        "counts": gc.get_count(), "top": top})
                del objs

        async def garbage():  # what the gateway's cyclic garbage is (FUZZ_TRACE_GARBAGE=1: kept, counted, freed)
            from collections import Counter

            gc.set_debug(gc.DEBUG_SAVEALL)
            total: Counter = Counter()
            while True:
                await asyncio.sleep(2)
                total.update(type(o).__qualname__ + " " + str(getattr(type(o), "__module__", ""))
                             for o in gc.garbage)
                gc.garbage.clear()
                _write({"k": "garbage", "t": time.perf_counter(), "top": total.most_common(40)})

        if os.environ.get("FUZZ_TRACE_CENSUS"):
            self._census = loop.create_task(census())
        if os.environ.get("FUZZ_TRACE_GARBAGE"):
            self._garbage = loop.create_task(garbage())

        async def probe():
            while True:
                t = time.perf_counter()
                await asyncio.sleep(0.002)
                late = time.perf_counter() - t - 0.002
                if late > 0.003:
                    _write({"k": "lag", "t": t, "d": late})

        self._lag_probe = loop.create_task(probe())

    engine_front.EngineFront.__init__ = front_init

if os.environ.get("FUZZ_SWITCH_INTERVAL"):  # an experiment: the GIL's switch interval in the server
    import sys

    sys.setswitchinterval(float(os.environ["FUZZ_SWITCH_INTERVAL"]))
