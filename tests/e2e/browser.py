"""A real headless Chromium for e2e tests, driven over the Chrome DevTools Protocol (CDP).

Needs Debian's Chromium (`apt-get update && apt-get install -y chromium`, which provides /usr/bin/chromium;
SEEDANCE_CHROMIUM names another binary). Test modules that use it mark themselves `requires_chromium`: without
the binary they skip, unless the environment variable CI is set; then the `chromium` fixture (conftest.py)
fails, so CI cannot silently lose them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

CHROMIUM = os.environ.get("SEEDANCE_CHROMIUM", "/usr/bin/chromium")  # override: another Chromium/Chrome binary
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
WIDTH, HEIGHT = 1100, 900
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")
PAGE_TEXT = "document.body ? document.body.innerText.slice(0, 2000) : document.readyState"

# Skip before any fixture (a module's server) starts; under CI the `chromium` fixture fails instead.
requires_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK) and not os.environ.get("CI"),
    reason=f"{CHROMIUM} not found ({INSTALL_HINT}); with CI set this fails instead")


# ------------------------------------------------------------------------------------------------ the process


def _pids_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (our unique temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def stop_chromium(process: subprocess.Popen, marker: str) -> None:
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


@contextlib.contextmanager
def launch_chromium(log_dir: Path) -> Iterator[str]:
    """A headless Chromium with a throwaway profile; yields its browser-level DevTools WebSocket URL."""
    if not os.access(CHROMIUM, os.X_OK):  # only reached under CI (see requires_chromium)
        pytest.fail(f"{CHROMIUM} is missing; install it with: {INSTALL_HINT}")
    log_path = log_dir / "chromium.log"
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
        stop_chromium(process, root)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the protocol


class CdpError(Exception):
    pass


class Cdp:
    """A minimal Chrome DevTools Protocol client: commands by id over one browser connection, flat sessions.

    `describe` is a page expression whose value goes into timeout messages (what the page showed)."""

    def __init__(self, ws, describe: str = PAGE_TEXT) -> None:
        self.ws = ws
        self.describe = describe
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

    async def evaluate(self, session: str, expression: str, await_promise: bool = False, timeout: float = 30):
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": await_promise}, session, timeout)
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
                state = await self.evaluate(session, self.describe)
                raise AssertionError(f"timed out after {timeout}s waiting for {expression!r}; page: {state}")
            await asyncio.sleep(interval)

    def exceptions(self, session: str) -> list[dict]:
        return [e["params"] for e in self.events
                if e["method"] == "Runtime.exceptionThrown" and e.get("sessionId") == session]


@contextlib.asynccontextmanager
async def open_page(browser_url: str, page_url: str, describe: str = PAGE_TEXT) -> AsyncIterator[tuple[Cdp, str]]:
    """A fresh tab navigated to page_url (the navigation committed); yields (cdp, session id), closes the tab."""
    async with connect(browser_url, max_size=None, ping_interval=None) as ws:
        cdp = Cdp(ws, describe)
        target = (await cdp.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        try:
            session = (await cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
            await cdp.send("Runtime.enable", session=session)
            await cdp.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                                  "deviceScaleFactor": 1, "mobile": False}, session)
            nav = await cdp.send("Page.navigate", {"url": page_url}, session)
            assert "errorText" not in nav, nav
            yield cdp, session
        finally:
            with contextlib.suppress(CdpError, TimeoutError):
                await cdp.send("Target.closeTarget", {"targetId": target}, timeout=5)
            cdp.reader.cancel()


# The demo pages' shared stylesheet (/static/demo.css) applied: its body rule, which neither page has inline.
STYLED = "getComputedStyle(document.body).maxWidth === '820px'"


@contextlib.asynccontextmanager
async def demo_tab(browser_url: str, page_url: str, describe: str) -> AsyncIterator[tuple[Cdp, str]]:
    """A fresh tab showing one of the demo pages (/ or /static/realtime.html), styled by the stylesheet the app
    serves and its WebSocket connected; yields (cdp, session id), and asserts at the end that the page threw
    nothing."""
    async with open_page(browser_url, page_url, describe=describe) as (cdp, session):
        await cdp.wait_for(session, "document.getElementById('status')?.textContent === 'connected'", 30)
        await cdp.wait_for(session, STYLED, 10)
        yield cdp, session
        assert cdp.exceptions(session) == [], "the page threw"
