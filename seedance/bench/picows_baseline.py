"""BASELINE for `seedance bench transports --baseline picows`: a bare picows WebSocket server, not Seedance.

It speaks just enough of /v1/stream for the load generator (generate in; chunk and done out, the same JSON
shapes) and does nothing else: no engine, no auth, no limits, no heartbeat. One ticker every 1/rate seconds
writes one message per connection with streams (a chunk per stream; the last one carries its done too), the
synthetic backend's pattern, so Seedance's CPU per delivered chunk can be put next to the floor the framing
library sets on the same box and load.

    python -m seedance.bench.picows_baseline --port 8100 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Streams:
    """Open streams of every connection: connection -> {request id: [tokens left, seq]}."""

    def __init__(self) -> None:
        self.by_conn: dict[object, dict[str, list[int]]] = {}


def build_listener(streams: Streams):
    from picows import WSListener, WSMsgType

    class BaselineListener(WSListener):
        def on_ws_connected(self, transport) -> None:
            self.transport = transport
            streams.by_conn[self] = {}

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
                return
            if frame.msg_type != WSMsgType.TEXT:
                return
            try:
                message = _decode(frame.get_payload_as_bytes())
                if message.get("type") == "generate":
                    streams.by_conn[self][str(message["id"])] = [int(message.get("max_tokens", 16)), 0]
            except (msgspec.DecodeError, KeyError, TypeError, ValueError, AttributeError):
                pass

        def on_ws_disconnected(self, transport) -> None:
            streams.by_conn.pop(self, None)

    return BaselineListener, WSMsgType


async def _tick(streams: Streams, interval: float, text_type) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        for listener, open_streams in list(streams.by_conn.items()):
            if not open_streams:
                continue
            items = []
            for rid, state in list(open_streams.items()):
                state[0] -= 1
                items.append({"type": "chunk", "id": rid, "seq": state[1], "text": " light", "token_ids": [1024]})
                state[1] += 1
                if state[0] <= 0:
                    items.append({"type": "done", "id": rid, "finish_reason": "length",
                                  "usage": {"prompt_tokens": 24, "completion_tokens": state[1], "cached_tokens": 0}})
                    del open_streams[rid]
            listener.transport.send(text_type, _encode(items[0] if len(items) == 1 else items))


async def serve(host: str, port: int, rate: float, backlog: int = 4096) -> None:
    from picows import ws_create_server

    streams = Streams()
    listener_cls, msg_type = build_listener(streams)
    server = await ws_create_server(lambda request: listener_cls(), host, port, backlog=backlog,
                                    websocket_handshake_timeout=60, reuse_address=True)
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ticker = asyncio.create_task(_tick(streams, 1.0 / rate, msg_type.TEXT))
    print(f"picows baseline listening on {host}:{port}", flush=True)
    try:
        await server.serve_forever()
    finally:
        ticker.cancel()


def launch_baseline(rate: float, log_path: str, ready_timeout_s: float = 30.0):
    """Start the baseline in its own process on a free loopback port; a ServerProcess once it accepts."""
    import os
    import subprocess
    import sys
    import time

    from seedance.bench.server_process import ServerProcess, free_port

    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "seedance.bench.picows_baseline", "--port", str(port),
                                    "--rate", str(rate)], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    server = ServerProcess(port, process, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"picows baseline exited early:\n{server.log()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"picows baseline not listening in time:\n{server.log()[-2000:]}")


def main() -> None:
    import uvloop

    from seedance.bench.loadgen import raise_nofile_limit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="chunks per second per stream")
    args = parser.parse_args()
    raise_nofile_limit()
    uvloop.run(serve(args.host, args.port, args.rate))


if __name__ == "__main__":
    main()
