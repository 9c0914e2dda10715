"""The demo page at `/` in a real headless Chromium, driven over the Chrome DevTools Protocol.

Needs Debian's Chromium (`apt-get update && apt-get install -y chromium`, which provides /usr/bin/chromium;
SEEDANCE_CHROMIUM names another binary). Without it the tests skip, unless the environment variable CI is set:
then they fail, so CI cannot silently lose them.

The screenshot of the finished streams goes to the test's tmp dir; with SEEDANCE_UPDATE_SCREENSHOT=1 it
also replaces docs/images/demo.png (kept out of ordinary runs so that `pytest` leaves the tree clean).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CHROMIUM = os.environ.get("SEEDANCE_CHROMIUM", "/usr/bin/chromium")  # override: another Chromium/Chrome binary
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
WIDTH, HEIGHT = 1100, 900
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo.png"
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")

# Skip before any fixture (the session's server) starts; under CI the `chromium` fixture fails instead.
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK) and not os.environ.get("CI"),
                                reason=f"{CHROMIUM} not found ({INSTALL_HINT}); with CI set this fails instead")


# ------------------------------------------------------------------------------------------------ the browser


def _pids_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (our unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def _stop(process: subprocess.Popen, marker: str) -> None:
    """End Chromium and every process it started, leaving none behind.

    Its helpers (zygotes, renderers, GPU, network) share the process group we gave it; the crash handlers
    start their own sessions, so they are found by our temp dir on their command line (--database=...).
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5  # the crash handlers exit by themselves once the browser is gone
    while (pids := _pids_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[str]:
    """A headless Chromium for this module; yields its browser-level DevTools WebSocket URL."""
    if not os.access(CHROMIUM, os.X_OK):  # only reached under CI (see pytestmark)
        pytest.fail(f"{CHROMIUM} is missing; install it with: {INSTALL_HINT}")
    log_path = tmp_path_factory.mktemp("chromium") / "chromium.log"
    root = tempfile.mkdtemp(prefix="seedance-chromium-")  # profile, and the config/cache dirs it would put in ~
    profile = os.path.join(root, "profile")
    env = {**os.environ, "XDG_CONFIG_HOME": os.path.join(root, "config"), "XDG_CACHE_HOME": os.path.join(root, "cache")}
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
            "about:blank"]
    # stderr to a file, not a pipe: Chromium logs a lot (dbus noise) and would block on a full pipe.
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            found = DEVTOOLS_LINE.search(log_path.read_text(errors="replace"))
            if found:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium gave no DevTools URL (exit {process.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        yield found.group(1)
    finally:
        _stop(process, root)
        shutil.rmtree(root, ignore_errors=True)


class CdpError(Exception):
    pass


class Cdp:
    """A minimal Chrome DevTools Protocol client: commands by id over one browser connection, flat sessions."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                future = self.pending.pop(msg.get("id"), None)
                if future is None:
                    if "method" in msg:
                        self.events.append(msg)
                elif not future.done():
                    if "error" in msg:
                        future.set_exception(CdpError(msg["error"]))
                    else:
                        future.set_result(msg.get("result", {}))
        except ConnectionClosed:
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(CdpError("DevTools connection closed"))

    async def send(self, method: str, params: dict | None = None, session: str | None = None,
                   timeout: float = 30) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send(json.dumps(message))
        async with asyncio.timeout(timeout):
            return await future

    async def evaluate(self, session: str, expression: str, await_promise: bool = False):
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": await_promise}, session)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, session: str, expression: str, timeout: float = 60, interval: float = 0.1):
        """Evaluate until the value is truthy (bounded); return that value."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(CdpError):  # e.g. the context was replaced by a navigation in flight
                value = await self.evaluate(session, expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                state = await self.evaluate(session, PAGE_STATE)
                raise AssertionError(f"timed out after {timeout}s waiting for {expression!r}; page: {state}")
            await asyncio.sleep(interval)

    def exceptions(self, session: str) -> list[dict]:
        return [e["params"] for e in self.events
                if e["method"] == "Runtime.exceptionThrown" and e.get("sessionId") == session]


@contextlib.asynccontextmanager
async def demo_page(browser_url: str, page_url: str):
    """A fresh tab showing the demo page, its WebSocket connected; yields (cdp, session id)."""
    async with connect(browser_url, max_size=None, ping_interval=None) as ws:
        cdp = Cdp(ws)
        target = (await cdp.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        try:
            session = (await cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
            await cdp.send("Runtime.enable", session=session)
            await cdp.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                                  "deviceScaleFactor": 1, "mobile": False}, session)
            nav = await cdp.send("Page.navigate", {"url": page_url}, session)
            assert "errorText" not in nav, nav
            await cdp.wait_for(session, "document.getElementById('status')?.textContent === 'connected'", 30)
            yield cdp, session
            assert cdp.exceptions(session) == [], "the page threw"
        finally:
            with contextlib.suppress(CdpError, TimeoutError):
                await cdp.send("Target.closeTarget", {"targetId": target}, timeout=5)
            cdp.reader.cancel()


PAGE_STATE = """(() => ({
  status: document.getElementById('status').textContent,
  counters: Object.assign({}, window.seedanceDemo),
  streams: [...document.querySelectorAll('.stream')].map((b) => ({
    id: b.id, done: b.dataset.done ?? null, tokens: Number(b.dataset.tokens),
    prompt: b.querySelector('.text b').textContent, out: b.querySelector('.out').textContent,
    meta: b.querySelector('.meta').textContent,
  })),
}))()"""


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def shown_tokens(meta: str) -> int:
    found = re.search(r"· (\d+) tokens ·", meta)
    assert found, meta
    return int(found.group(1))


# ------------------------------------------------------------------------------------------------ the tests


async def test_three_streams_at_once_over_one_websocket(server, chromium, tmp_path):
    async with demo_page(chromium, f"{server.http}/") as (cdp, page):
        await cdp.evaluate(page, "document.getElementById('three').click()")
        await cdp.wait_for(page, "(() => { const s = document.querySelectorAll('.stream');"
                                 " return s.length === 3 && [...s].every((b) => b.dataset.done); })()", 60)
        state = await cdp.evaluate(page, PAGE_STATE)
        shot = base64.b64decode((await cdp.send("Page.captureScreenshot", {"format": "png"}, page))["data"])

    streams = {s["id"]: s for s in state["streams"]}
    assert set(streams) == {"r1", "r2", "r3"}, state
    prompts = {"r1": "In the beginning", "r2": "Blessed are the meek", "r3": "The LORD is my shepherd"}
    for rid, s in streams.items():
        assert s["prompt"] == prompts[rid]
        assert s["done"] in ("length", "stop"), s
        assert s["out"].strip(), f"{rid} produced no text beyond its prompt: {s}"
        assert 0 < s["tokens"] <= 60, s
        assert shown_tokens(s["meta"]) == s["tokens"], s  # usage.completion_tokens == tokens received
        assert f"finish: {s['done']}" in s["meta"], s
    assert len({s["out"] for s in streams.values()}) == 3, "three prompts, three different continuations"
    counters = state["counters"]
    assert counters["sockets"] == 1, counters  # the three streams shared the page's one WebSocket...
    assert counters["multiRequestMessages"] >= 1, counters  # ...and were served together, interleaved
    assert state["status"] == "connected"

    assert png_size(shot) == (WIDTH, HEIGHT)
    (tmp_path / "demo.png").write_bytes(shot)
    if os.environ.get("SEEDANCE_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)


async def test_stop_button_cancels_a_stream(server, chromium):
    async with demo_page(chromium, f"{server.http}/") as (cdp, page):
        # A long request; press its Stop button as soon as the first tokens are on screen.
        await cdp.evaluate(page, "document.getElementById('max_tokens').value = '2000';"
                                 "document.getElementById('prompt').value = 'And the earth was without form';"
                                 "document.getElementById('send').click()")
        await cdp.evaluate(page, """new Promise((resolve, reject) => {
          const box = document.getElementById('r1'), t0 = performance.now();
          const tick = setInterval(() => {
            if (Number(box.dataset.tokens) > 0 || box.dataset.done || performance.now() - t0 > 30000) {
              clearInterval(tick);
              if (box.dataset.done) reject(new Error('finished before Stop: ' + box.dataset.done));
              else if (Number(box.dataset.tokens) > 0) { box.querySelector('.stop').click(); resolve(true); }
              else reject(new Error('no tokens within 30 s'));
            }
          }, 5);
        })""", await_promise=True)
        await cdp.wait_for(page, "document.getElementById('r1').dataset.done", 30)
        state = await cdp.evaluate(page, PAGE_STATE)

    (s,) = state["streams"]
    assert s["done"] == "cancelled", s
    assert 0 < s["tokens"] < 2000, s
    assert s["out"].strip(), s
    assert "finish: cancelled" in s["meta"], s
    assert state["counters"]["sockets"] == 1
    assert state["status"] == "connected"  # cancelling ends the request, not the connection
