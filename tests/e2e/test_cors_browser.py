"""CORS in a real browser: a page on another origin streams a chat completion over SSE with `fetch()`.

Headless Chromium (tests/e2e/browser.py) loads a tiny page from a second HTTP server on its own loopback port,
so the page's origin differs from the Seedance server's. Its script POSTs to /v1/chat/completions with a
bearer token and `Content-Type: application/json`, which makes the browser send a preflight first (without
the token), and reads the SSE stream with `response.body.getReader()` up to `[DONE]`. The same page served
from an origin that is not in `allowed_origins` gets a failed fetch (TypeError), and the server carries on.
Skips without Chromium unless CI is set (then it fails).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser import open_page, requires_chromium
from tests.e2e.conftest import RunningServer, start_server
from tests.pki import AUDIENCE, ISSUER, SECRET, hs256

pytestmark = requires_chromium

SECURITY_MD = Path(__file__).resolve().parents[2] / "docs" / "security.md"
DOCS_URL = "https://llm.example.com"  # where the documented example fetches from

PAGE = """<!doctype html>
<meta charset="utf-8"><title>cross-origin client</title>
<p>A page on another origin than the Seedance server.</p>
<script>
async function streamChat(server, token, prompt, extraHeaders = {}) {
  const headers = {'Content-Type': 'application/json', ...extraHeaders};
  if (token) headers.Authorization = 'Bearer ' + token;
  const response = await fetch(server + '/v1/chat/completions', {method: 'POST', headers, body: JSON.stringify(
      {model: 'seedance-tiny', messages: [{role: 'user', content: prompt}], max_tokens: 16, stream: true})});
  const result = {status: response.status, contentType: response.headers.get('Content-Type'),
                  text: '', chunks: 0, done: false};
  if (!response.ok) {  // a refusal: its JSON body and exposed headers are readable cross-origin too
    result.error = (await response.json()).error;
    result.challenge = response.headers.get('WWW-Authenticate');
    return result;
  }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf('\\n\\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') { result.done = true; continue; }
        result.chunks += 1;
        result.text += JSON.parse(data).choices[0]?.delta?.content ?? '';
      }
    }
  }
  return result;
}

async function listModels(server, token) {
  const response = await fetch(server + '/v1/models', {headers: {Authorization: 'Bearer ' + token}});
  return {status: response.status, ids: (await response.json()).data.map((m) => m.id)};
}

async function attempt(promise) {  // a failed fetch as a value: CORS failures are TypeErrors
  try { return {ok: true, value: await promise}; }
  catch (err) { return {ok: false, name: err.name, message: err.message}; }
}
</script>
"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """Serve PAGE on a free loopback port (bound before the Seedance server starts, so no port race)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="cors-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    """(allowed, refused): the same page from two origins, only the first in allowed_origins."""
    with page_server() as allowed, page_server() as refused:
        yield allowed, refused


@pytest.fixture(scope="module")
def api(tmp_path_factory, origins) -> Iterator[RunningServer]:
    srv = start_server(tmp_path_factory, jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                       allowed_origins=origins[0], num_kv_blocks=256)
    yield srv
    srv.stop()


@contextlib.asynccontextmanager
async def client_page(chromium: str, origin: str):
    async with open_page(chromium, f"{origin}/") as (cdp, session):
        await cdp.wait_for(session, "typeof window.attempt === 'function'", 30)
        yield cdp, session
        assert cdp.exceptions(session) == [], "the page threw"


async def call(cdp, session: str, js: str, *args: object) -> dict:
    """Run `attempt(js(...args))` in the page and return its result (args passed as JSON)."""
    expression = f"attempt({js}({', '.join(json.dumps(a) for a in args)}))"
    return await cdp.evaluate(session, expression, await_promise=True, timeout=60)


async def test_a_page_on_an_allowed_origin_streams_a_chat_completion(api, chromium, origins):
    token = hs256()
    async with client_page(chromium, origins[0]) as (cdp, page):
        got = await call(cdp, page, "streamChat", api.http, token, "In the beginning")
        models = await call(cdp, page, "listModels", api.http, token)
    assert got["ok"], got
    result = got["value"]
    assert result["status"] == 200, result
    assert result["contentType"].startswith("text/event-stream"), result
    assert result["done"], f"the stream did not reach [DONE]: {result}"
    assert result["chunks"] >= 2 and result["text"].strip(), result
    assert models == {"ok": True, "value": {"status": 200, "ids": ["seedance-tiny"]}}, models


def documented_example() -> str:
    """The `streamChat` function docs/security.md shows (its first js block after the CORS heading)."""
    text = SECURITY_MD.read_text()
    found = re.search(r"```js\n(async function streamChat.*?)```", text[text.index("### CORS"):], re.S)
    assert found, "docs/security.md lost its cross-origin fetch example"
    assert DOCS_URL in found.group(1)
    return found.group(1)


async def test_the_documented_example_works(api, chromium, origins):
    example = documented_example().replace(f'"{DOCS_URL}', f'"{api.http}')
    async with client_page(chromium, origins[0]) as (cdp, page):
        await cdp.evaluate(page, f"window.docs = {{}}; window.docs.streamChat = {example.strip()};")
        got = await cdp.evaluate(page, f"""attempt((async () => {{
            let text = ''; await docs.streamChat({json.dumps(hs256())}, 'In the beginning', (t) => {{ text += t; }});
            return text; }})())""", await_promise=True, timeout=60)
    assert got["ok"] and got["value"].strip(), got


async def test_a_refusal_is_readable_by_the_page(api, chromium, origins):
    """No token: the preflight passes (browsers never send credentials on one), the POST gets a 401 whose
    JSON body and WWW-Authenticate challenge the page's script can read."""
    async with client_page(chromium, origins[0]) as (cdp, page):
        got = await call(cdp, page, "streamChat", api.http, None, "In the beginning")
    assert got["ok"], got
    result = got["value"]
    assert result["status"] == 401, result
    assert result["error"]["code"] == "unauthorized", result
    assert result["challenge"].startswith('Bearer realm="seedance"'), result


async def test_a_header_outside_the_allowed_set_fails_the_fetch(api, chromium, origins):
    """The browser asks first (preflight) and honours the answer: the request itself is never sent."""
    async with client_page(chromium, origins[0]) as (cdp, page):
        got = await call(cdp, page, "streamChat", api.http, hs256(), "In the beginning", {"X-Not-Allowed": "1"})
    assert not got["ok"] and got["name"] == "TypeError", got
    assert "header_not_allowed: request headers not allowed cross-origin: x-not-allowed" in api.log()


async def test_a_page_on_another_origin_cannot_fetch_and_the_server_stays_healthy(api, chromium, origins):
    token = hs256()
    posts_refused = api.log().count("refused POST")
    async with client_page(chromium, origins[1]) as (cdp, page):
        refused = await call(cdp, page, "streamChat", api.http, token, "In the beginning")
    assert not refused["ok"] and refused["name"] == "TypeError", refused
    assert f"refused OPTIONS /v1/chat/completions from 127.0.0.1: 403 origin_not_allowed: Origin {origins[1]}" \
        in api.log()
    assert api.log().count("refused POST") == posts_refused  # the preflight failed: the POST was never sent

    assert httpx.get(f"{api.http}/readyz", timeout=10).status_code == 200
    async with client_page(chromium, origins[0]) as (cdp, page):
        again = await call(cdp, page, "streamChat", api.http, token, "And God said")
    assert again["ok"] and again["value"]["done"] and again["value"]["text"].strip(), again
