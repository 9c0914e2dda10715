"""The demo page's realtime mode (/static/realtime.html) in a real headless Chromium: typing streams the message
word by word (conversation.item.append), and sending while the answer streams interrupts it (barge-in)."""

from __future__ import annotations

import pytest

from tests.e2e.browser import demo_tab, requires_chromium

pytestmark = requires_chromium

STATE = """(() => ({
  status: document.getElementById('status').textContent,
  demo: JSON.parse(JSON.stringify(window.seedanceRealtime)),
  turns: [...document.querySelectorAll('.turn')].map((t) => ({
    role: t.classList.contains('user') ? 'user' : 'assistant', status: t.dataset.status ?? null,
    text: t.querySelector('.text').textContent, meta: t.querySelector('.meta').textContent })),
}))()"""

TYPE = """(async (text) => {
  const say = document.getElementById('say');
  for (const ch of text) {
    say.value += ch; say.dispatchEvent(new Event('input'));
    if (ch === ' ') await new Promise((r) => setTimeout(r, 10));
  }
  document.getElementById('send').click();
  return true;
})(%r)"""


def realtime_page(browser_url: str, page_url: str):
    """A fresh tab showing the realtime demo, styled by the shared stylesheet and connected."""
    return demo_tab(browser_url, page_url, STATE)


async def test_type_while_it_answers_and_the_answer_is_interrupted(server, chromium):
    # The scenario needs the first answer still streaming when the second question is typed; a model that ends
    # it on its own first (an early end-of-turn token) leaves nothing to interrupt: start over with another one.
    for question in ("Tell me about the children of Israel in the wilderness", "Tell me a long story about Moses",
                     "Describe the journey through the desert, day by day"):
        async with realtime_page(chromium, f"{server.http}/static/realtime.html") as (cdp, page):
            await cdp.evaluate(page, "document.getElementById('max_tokens').value = '2000'")
            await cdp.evaluate(page, TYPE % question, await_promise=True)
            await cdp.wait_for(page, "Object.values(window.seedanceRealtime.responses).some((r) => r.text.length > 0)",
                               60)
            if await cdp.evaluate(page, "Object.values(window.seedanceRealtime.responses).some((r) => r.status)"):
                continue
            await cdp.evaluate(page, "document.getElementById('max_tokens').value = '12'")
            await cdp.evaluate(page, TYPE % "Who was Aaron?", await_promise=True)
            await cdp.wait_for(page, "(() => { const r = Object.values(window.seedanceRealtime.responses);"
                                     " return r.length === 2 && r.every((x) => x.status); })()", 60)
            state = await cdp.evaluate(page, STATE)
            break
    else:
        pytest.fail("every first answer ended before it could be interrupted")

    assert [t["role"] for t in state["turns"]] == ["user", "assistant", "user", "assistant"], state
    first, second = (t for t in state["turns"] if t["role"] == "assistant")
    assert first["status"] == "cancelled" and first["text"], first  # interrupted, keeping what it had shown
    assert second["status"] in ("completed", "incomplete") and second["text"], second
    assert state["turns"][0]["text"] == question
    assert state["demo"]["appends"] >= 5  # the words went out as they were typed
    assert state["demo"]["errors"] == [] and state["demo"]["sockets"] == 1
    assert "prompt tokens cached" in second["meta"]
