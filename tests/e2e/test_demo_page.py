"""The demo page at `/` in a real headless Chromium, driven over the Chrome DevTools Protocol (tests/e2e/browser.py).

Needs Debian's Chromium (`apt-get update && apt-get install -y chromium`, which provides /usr/bin/chromium;
SEEDANCE_CHROMIUM names another binary). Without it the tests skip, unless the environment variable CI is set:
then they fail, so CI cannot silently lose them.

The screenshot of the finished streams goes to the test's tmp dir; with SEEDANCE_UPDATE_SCREENSHOT=1 it
also replaces docs/images/demo.png (kept out of ordinary runs so that `pytest` leaves the tree clean).
"""

from __future__ import annotations

import base64
import os
import re
import struct
from pathlib import Path

from tests.e2e.browser import HEIGHT, WIDTH, demo_tab, requires_chromium

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "demo.png"

# Skip before any fixture (the session's server) starts; under CI the `chromium` fixture fails instead.
pytestmark = requires_chromium


def demo_page(browser_url: str, page_url: str):
    """A fresh tab showing the demo page, styled and its WebSocket connected; yields (cdp, session id)."""
    return demo_tab(browser_url, page_url, PAGE_STATE)


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


async def test_a_model_that_takes_images_gets_an_image_picker(server, chromium, tmp_path_factory):
    """Against a tiny LLaVA server the page shows the picker; a pasted-in image goes as an image_url content part
    and the stream completes. Against the text model (the other tests) the picker stays hidden."""
    from seedance.bench.llava_checkpoint import build_llava
    from tests.e2e.conftest import start_server
    from tests.models.test_llava import png

    async with demo_page(chromium, f"{server.http}/") as (cdp, page):
        await cdp.wait_for(page, "window.seedanceDemo.takesImages === false", 30)
        assert await cdp.evaluate(page, "document.getElementById('image_label').hidden") is True
    llava = start_server(tmp_path_factory, model=build_llava(tmp_path_factory.mktemp("models") / "tiny-llava"))
    try:
        async with demo_page(chromium, f"{llava.http}/") as (cdp, page):
            await cdp.wait_for(page, "window.seedanceDemo.takesImages === true", 30)
            assert await cdp.evaluate(page, "document.getElementById('image_label').hidden") is False
            b64 = base64.b64encode(png(7)).decode()
            await cdp.evaluate(page, f"takeImage(new File([Uint8Array.from(atob('{b64}'), (c) => c.charCodeAt(0))],"
                                     " 'frame.png', {type: 'image/png'}))")
            await cdp.wait_for(page, "document.getElementById('image_name').textContent === 'frame.png'", 10)
            await cdp.evaluate(page, "document.getElementById('send').click()")
            await cdp.wait_for(page, "document.querySelector('.stream')?.dataset.done !== undefined", 60)
            state = await cdp.evaluate(page, PAGE_STATE)
    finally:
        llava.stop()
    stream = state["streams"][0]
    assert stream["done"] in ("length", "stop"), stream
    assert stream["tokens"] > 0
