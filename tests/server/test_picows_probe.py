"""The start-up probe of ws_picows: the installed picows answers a real handshake and frame over a socket pair
as the module builds its protocol; when it does not (a picows whose internals moved), the server serves
/v1/stream on aiohttp and says so in a warning."""

from __future__ import annotations

import contextlib
import logging

import aiohttp

from seedance.server.transports import ws_picows


async def test_the_installed_picows_passes_the_probe():
    assert await ws_picows.probe_picows(1 << 20) is None


def _changed_constructor():
    """A picows whose WSProtocol takes its arguments in another order or number: the constructor raises."""
    class Moved:
        def __init__(self, *args):
            raise TypeError(f"__init__() takes 13 positional arguments but {len(args)} were given")

    return Moved


async def test_a_changed_constructor_fails_the_probe_with_the_reason(monkeypatch):
    monkeypatch.setattr(ws_picows, "_protocol_class", _changed_constructor)
    why = await ws_picows.probe_picows(1 << 20)
    assert why is not None and "TypeError" in why and "positional" in why


async def test_a_protocol_that_never_answers_fails_the_probe_in_time(monkeypatch):
    import asyncio

    monkeypatch.setattr(ws_picows, "_protocol_class", lambda: type("Mute", (asyncio.Protocol,), {
        "__init__": lambda self, *args: None}))
    why = await ws_picows.probe_picows(1 << 20, timeout_s=0.3)
    assert why == "no answer in 0.3 s"


async def test_the_server_falls_back_to_aiohttp_with_a_warning(monkeypatch, caplog):
    """The real app (`serve`), started while picows' protocol class fails the probe: it warns, and /v1/stream
    still streams (on aiohttp: every picows protocol this picows would build raises)."""
    import asyncio

    from seedance.bench.server_process import free_port
    from seedance.server.app import serve
    from seedance.server.http.config import ServerConfig

    monkeypatch.setattr(ws_picows, "_protocol_class", _changed_constructor)
    port = free_port()
    ready = asyncio.Event()
    caplog.set_level(logging.WARNING, logger=ws_picows.__name__)
    task = asyncio.create_task(serve(ServerConfig(host="127.0.0.1", port=port), ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        warnings = [r for r in caplog.records if r.name == ws_picows.__name__ and r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "falls back to ws_stack=aiohttp" in warnings[0].getMessage()
        assert "TypeError" in warnings[0].getMessage()
        async with aiohttp.ClientSession() as session:
            for _ in range(600):  # ready is the listener; the model may still be loading
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
            async with session.ws_connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send_json({"type": "generate", "id": "a", "prompt": "Hello", "max_tokens": 4,
                                    "ignore_eos": True})
                kinds: list[str] = []
                while "done" not in kinds:
                    payload = await asyncio.wait_for(ws.receive_json(), 30)
                    kinds += [m["type"] for m in (payload if isinstance(payload, list) else [payload])]
        assert "chunk" in kinds
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
