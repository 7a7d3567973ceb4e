"""``peers.py`` driver: the floors, a raw trio-websocket echo and a raw trio unix-socket
echo (8-byte little-endian length + msgpack, the agent link's framing), with no
correlation layer, server in a child process (run in the project's ``.venv``).

    _peers_floor.py            the client (driver); starts the server as its child
    _peers_floor.py server     the echo server: prints its ws port and unix path
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import msgpack
import trio
import trio_websocket
from _peers_common import MARKER, PAYLOAD, emit, in_flight_rate, serve_async, timed_sequence
from _raw_framing import FrameReader, frame
from _ws_pipelined import PipelinedWs

CONNECTIONS = 8


async def _ws_handler(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(msgpack.packb(msgpack.unpackb(await ws.get_message())))
    except trio_websocket.ConnectionClosed:
        pass


async def _unix_handler(stream: trio.SocketStream) -> None:
    reader = FrameReader(stream)
    try:
        while True:
            await stream.send_all(frame(msgpack.packb(msgpack.unpackb(await reader.body()))))
    except (EOFError, trio.BrokenResourceError):
        pass


async def run_server() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="peers-floor-"), "echo.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, _ws_handler, "127.0.0.1", 0, None)
        nursery.start_soon(trio.serve_listeners, _unix_handler, [trio.SocketListener(sock)])
        emit({"ws_port": server.port, "unix_path": path})
        # Until the client (our parent) closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()
    os.unlink(path)


async def run_client(server: subprocess.Popen[str], address: dict[str, Any]) -> None:
    assert server.stdin is not None
    url = f"ws://127.0.0.1:{address['ws_port']}/"
    body = msgpack.packb(PAYLOAD)
    try:
        async with trio.open_nursery() as nursery:
            ws_conn = await trio_websocket.connect_websocket_url(nursery, url)
            pipelined = []
            for _ in range(CONNECTIONS):
                client = PipelinedWs(await trio_websocket.connect_websocket_url(nursery, url), body)
                nursery.start_soon(client.read)
                pipelined.append(client)
            unix = await trio.open_unix_socket(address["unix_path"])
            reader = FrameReader(unix)

            async def ws_call() -> None:
                await ws_conn.send_message(body)
                msgpack.unpackb(await ws_conn.get_message())

            async def unix_call() -> None:
                await unix.send_all(frame(body))
                msgpack.unpackb(await reader.body())

            async def handle(command: dict[str, Any]) -> dict[str, Any]:
                if command["op"] == "seq":
                    return await timed_sequence(ws_call if command["target"] == "ws" else unix_call, command["n"])
                if command["target"] != "ws":
                    return {}
                return await in_flight_rate([c.call for c in pipelined], command["in_flight"], command["total"])

            emit({"ready": True, "node_pid": server.pid, "server_roots": [server.pid], "exclude": []})
            await serve_async(handle)
            await unix.aclose()
            nursery.cancel_scope.cancel()
    finally:
        server.stdin.close()
        server.wait()


if __name__ == "__main__":
    if sys.argv[1:] == ["server"]:
        trio.run(run_server)
    else:
        echo_server = subprocess.Popen(
            [sys.executable, __file__, "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert echo_server.stdout is not None
        trio.run(run_client, echo_server, json.loads(echo_server.stdout.readline()[len(MARKER) :]))
