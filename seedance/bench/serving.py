"""`seedance bench serving`: load any OpenAI-compatible server the way `vllm bench serve` does.

The same fixed-seed prompts go to Seedance, vLLM or llama-server unchanged: streaming /v1/completions (or
/v1/chat/completions), `ignore_eos` as an extra body field (all three honour it), closed-loop concurrency
levels (C clients started together, each sending its next prompt as soon as its last one finished) or Poisson
arrival rates. Per request it records the time to the first token, the gaps between streamed chunks and the
whole latency; per level it reports output tokens/s, TTFT / ITL / TPOT / E2E percentiles, goodput against an
SLO, errors and, for a server on this machine, its resident memory (the process and its children).
"""

from __future__ import annotations

import asyncio
import json
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from seedance.bench.serving_dataset import Prompt
from seedance.bench.stats import poisson_arrivals

QUANTILES = (50, 90, 99)


@dataclass(slots=True)
class Slo:
    """A request is "good" when each bound it has is met (vLLM's goodput); None: no bound."""

    ttft_ms: float | None = 1000.0
    tpot_ms: float | None = 100.0
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> Slo:
        """'ttft=1000,tpot=100,e2e=5000' (milliseconds); keys left out have no bound."""
        slo = cls(None, None, None)
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in ("ttft", "tpot", "e2e") or not value:
                raise ValueError(f"bad SLO part {part!r}: use ttft=MS, tpot=MS, e2e=MS")
            setattr(slo, f"{key}_ms", float(value))
        return slo

    def met(self, r: RequestResult) -> bool:
        checks = ((self.ttft_ms, r.ttft_s), (self.tpot_ms, r.tpot_s), (self.e2e_ms, r.e2e_s))
        return r.ok and all(bound is None or (v is not None and v * 1000 <= bound) for bound, v in checks)


@dataclass(slots=True)
class RequestResult:
    ok: bool = False
    error: str | None = None
    output_tokens: int = 0
    prompt_tokens: int | None = None  # as the server's usage reports it
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Target:
    base_url: str  # .../v1
    model: str
    endpoint: str  # "completions" or "chat"
    max_tokens: int
    ignore_eos: bool = True
    temperature: float = 0.0
    timeout_s: float = 600.0
    extra_body: dict = field(default_factory=dict)

    def request(self, prompt: Prompt) -> tuple[str, dict]:
        body = {"model": self.model, "max_tokens": prompt.max_tokens or self.max_tokens, "stream": True,
                "temperature": self.temperature, "ignore_eos": self.ignore_eos,
                "stream_options": {"include_usage": True}, **self.extra_body}
        if self.endpoint == "chat":
            return f"{self.base_url}/chat/completions", {**body, "messages": prompt.chat_messages()}
        return f"{self.base_url}/completions", {**body, "prompt": prompt.completions_prompt()}


def _chunk_text(chunk: dict, chat: bool) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    if chat:
        return (choices[0].get("delta") or {}).get("content") or ""
    return choices[0].get("text") or ""


async def send(session: aiohttp.ClientSession, target: Target, prompt: Prompt) -> RequestResult:
    """One streamed request: the arrival time of every chunk that carries text, and the usage it ends with."""
    url, body = target.request(prompt)
    result = RequestResult()
    chat = target.endpoint == "chat"
    arrivals: list[float] = []
    usage_tokens = None
    start = time.perf_counter()
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=target.timeout_s)) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if "error" in chunk:
                    result.error = str(chunk["error"])[:200]
                    return result
                if _chunk_text(chunk, chat):
                    arrivals.append(now)
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                    result.prompt_tokens = usage.get("prompt_tokens")
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result
    end = time.perf_counter()
    if not arrivals:
        result.error = "no tokens streamed"
        return result
    result.ok = True
    result.output_tokens = usage_tokens if usage_tokens is not None else len(arrivals)
    result.ttft_s = arrivals[0] - start
    result.e2e_s = end - start
    result.itl_s = np.diff(arrivals).tolist()
    if result.output_tokens > 1:
        result.tpot_s = (arrivals[-1] - arrivals[0]) / (result.output_tokens - 1)
    return result


class MemorySampler:
    """Samples a local server's memory (the process and all its children) on a thread, every interval."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (rss MiB, pss MiB), summed over the process tree
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> tuple[float, float]:
        import psutil

        rss = pss = 0
        for proc in [self.process, *self.process.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        return rss / 2**20, pss / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.sample())

    def __enter__(self) -> MemorySampler:
        self.samples = [self.sample()]
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self.sample())

    def peak(self) -> dict[str, float]:
        return {"rss_mib": max(s[0] for s in self.samples), "pss_mib": max(s[1] for s in self.samples)}


def pid_listening_on(port: int) -> int | None:
    """The pid of the local process listening on a TCP port (needs permission to see it)."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def _dist_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"mean": None, **{f"p{q}": None for q in QUANTILES}}
    arr = np.asarray(seconds) * 1000.0
    return {"mean": float(arr.mean()), **{f"p{q}": float(np.percentile(arr, q)) for q in QUANTILES}}


def summarize(results: list[RequestResult], duration_s: float, slo: Slo, expected_tokens: int | None) -> dict:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    good = [r for r in ok if slo.met(r)]
    errors = [r.error for r in results if not r.ok]
    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "short_outputs": sum(1 for r in ok if expected_tokens and r.output_tokens != expected_tokens),
        "duration_s": duration_s,
        "output_tokens": out_tokens,
        "prompt_tokens_mean": float(np.mean(prompt)) if (prompt := [r.prompt_tokens for r in ok
                                                                    if r.prompt_tokens is not None]) else None,
        "output_tok_s": out_tokens / duration_s if duration_s > 0 else 0.0,
        "requests_per_s": len(ok) / duration_s if duration_s > 0 else 0.0,
        "goodput_req_s": len(good) / duration_s if duration_s > 0 else 0.0,
        "slo_met_fraction": len(good) / len(results) if results else 0.0,
        "ttft_ms": _dist_ms([r.ttft_s for r in ok]),
        "tpot_ms": _dist_ms([r.tpot_s for r in ok if r.tpot_s is not None]),
        "itl_ms": _dist_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": _dist_ms([r.e2e_s for r in ok]),
    }


async def closed_loop(session, target: Target, prompts: list[Prompt], concurrency: int) -> list[RequestResult]:
    """`concurrency` clients started together; each sends the next unsent prompt when its last one is done."""
    queue = list(reversed(prompts))
    results: list[RequestResult] = []

    async def client() -> None:
        while queue:
            results.append(await send(session, target, queue.pop()))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


async def open_loop(session, target: Target, prompts: list[Prompt], rate: float, seed: int,
                    max_concurrency: int | None) -> list[RequestResult]:
    """Requests sent at Poisson arrival times (at most max_concurrency in flight, if set)."""
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    t0 = time.perf_counter()

    async def one(at: float, prompt: Prompt) -> RequestResult:
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        if gate is None:
            return await send(session, target, prompt)
        async with gate:
            return await send(session, target, prompt)

    arrivals = poisson_arrivals(len(prompts), rate, seed)
    return list(await asyncio.gather(*(one(at, p) for at, p in zip(arrivals, prompts, strict=True))))


async def wait_until_serving(session: aiohttp.ClientSession, target: Target, prompt: Prompt,
                             timeout_s: float, discover: bool) -> str:
    """Send a one-token request until one succeeds (a server may listen long before it serves: 503 while
    loading), or raise after timeout_s; the model name that served. With discover, the name is asked of
    /v1/models before each try: a server may report another name while it is still loading."""
    deadline = time.monotonic() + timeout_s
    while True:
        model = await discover_model(session, target.base_url) if discover else target.model
        probe = Target(target.base_url, model, target.endpoint, 1, target.ignore_eos, timeout_s=60)
        result = await send(session, probe, prompt)
        if result.ok:
            return model
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.base_url} did not serve within {timeout_s:g} s: {result.error}")
        await asyncio.sleep(0.5)


async def discover_model(session: aiohttp.ClientSession, base_url: str) -> str:
    deadline = time.monotonic() + 300
    while True:  # a server starting up may not answer yet
        try:
            async with session.get(f"{base_url}/models", timeout=aiohttp.ClientTimeout(total=30)) as resp:
                resp.raise_for_status()
                data = (await resp.json()).get("data") or []
                break
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    if not data:
        raise RuntimeError(f"{base_url}/models lists no model; pass --model")
    return data[0]["id"]


@dataclass(slots=True)
class Level:
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests/s
    num_prompts: int = 0


async def run_serving_bench(base_url: str, levels: list[Level], prompts: list[Prompt], *, model: str | None,
                            endpoint: str, max_tokens: int, ignore_eos: bool, slo: Slo, warmup: int,
                            seed: int, server_pid: int | None, max_concurrency: int | None = None,
                            label: str | None = None, settings: dict | None = None,
                            on_level=None, ready_timeout_s: float = 300.0, sampling: dict | None = None) -> dict:
    """Run every level in turn on its own slice of `prompts` (so no level reuses another's prompts and no
    prefix cache carries over); the first `warmup` prompts warm the server up and are not measured.
    sampling: temperature (default 0, greedy) and any other sampling fields (top_p, top_k) every measured request
    sends."""
    base_url = base_url.rstrip("/")
    needed = warmup + sum(level.num_prompts for level in levels)
    if len(prompts) < needed:
        raise ValueError(f"need {needed} prompts, got {len(prompts)}")
    # A fresh connection per request: llama-server closes idle keep-alive connections, and a reused dead one
    # fails the next request ("can not write request body"); a loopback connect costs ~0.1 ms.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        sampling = dict(sampling or {})
        target = Target(base_url, model or "", endpoint, max_tokens, ignore_eos,
                        temperature=sampling.pop("temperature", 0.0), extra_body=sampling)
        model = target.model = await wait_until_serving(session, target, prompts[0], ready_timeout_s, not model)
        if warmup:
            await closed_loop(session, Target(base_url, model, endpoint, 8, ignore_eos), prompts[:warmup], warmup)
        memory = MemorySampler(server_pid) if server_pid else None
        idle = memory.sample() if memory else None
        offset = warmup
        rows = []
        for level in levels:
            chunk = prompts[offset : offset + level.num_prompts]
            offset += level.num_prompts
            sampler = MemorySampler(server_pid) if server_pid else None
            with sampler or _nothing():
                t0 = time.perf_counter()
                if level.rate is None:
                    results = await closed_loop(session, target, chunk, level.concurrency or 1)
                else:
                    results = await open_loop(session, target, chunk, level.rate, seed, max_concurrency)
                duration = time.perf_counter() - t0
            row = {"concurrency": level.concurrency, "rate": level.rate,
                   **summarize(results, duration, slo, max_tokens if ignore_eos else None)}
            row["server_memory"] = sampler.peak() if sampler else None
            rows.append(row)
            if on_level is not None:
                on_level(row)
    return {
        "label": label or model,
        "base_url": base_url,
        "model": model,
        "settings": {"endpoint": endpoint, "max_tokens": max_tokens, "ignore_eos": ignore_eos, "warmup": warmup,
                     "seed": seed, "slo": asdict(slo), "server_pid": server_pid, **(settings or {})},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "server_memory_idle": {"rss_mib": idle[0], "pss_mib": idle[1]} if idle else None,
        "results": rows,
    }


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def render(console, report: dict) -> None:
    from rich.table import Table

    s = report["settings"]
    table = Table(title=f"{report['label']} @ {report['base_url']}: {s['endpoint']}, "
                  f"{s.get('prompt_tokens', '?')}-token prompts, {s['max_tokens']} output tokens"
                  f"{' (ignore_eos)' if s['ignore_eos'] else ''}")
    for col in ("C / rate", "req", "err", "out tok/s", "TTFT p50/p90/p99", "ITL p50/p90/p99", "TPOT p50/p99",
                "E2E p50/p99", "goodput req/s", "RSS MiB"):
        table.add_column(col, justify="right")

    def trio(d: dict, keys=("p50", "p90", "p99")) -> str:
        return " / ".join("-" if d[k] is None else f"{d[k]:.1f}" for k in keys)

    for r in report["results"]:
        mem = r.get("server_memory")
        table.add_row(f"C={r['concurrency']}" if r["rate"] is None else f"{r['rate']:g}/s", str(r["requests"]),
                      str(r["errors"]), f"{r['output_tok_s']:.1f}", trio(r["ttft_ms"]), trio(r["itl_ms"]),
                      trio(r["tpot_ms"], ("p50", "p99")), trio(r["e2e_ms"], ("p50", "p99")),
                      f"{r['goodput_req_s']:.2f}", "-" if not mem else f"{mem['rss_mib']:.0f}")
    console.print(table)
    for r in report["results"]:
        if r["error_examples"]:
            console.print(f"[red]errors at {r['concurrency'] or r['rate']}: {r['error_examples']}[/red]")
        if r["short_outputs"]:
            console.print(f"[yellow]{r['short_outputs']} requests returned fewer than {s['max_tokens']} tokens "
                          "(does the server honour ignore_eos?)[/yellow]")


def write_json(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
