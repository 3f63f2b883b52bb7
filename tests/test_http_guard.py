"""The guarded protocol's writes, seen at the transport: uvicorn's real protocol and a real ASGI app, with a
transport that records what would go to the socket. (The limits themselves are tested against a live server
in test_hostile.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.config import Config
from uvicorn.server import ServerState

from app.http_guard import GuardedHttpToolsProtocol


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


release = asyncio.Event()


async def small(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def upload(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


async def streamed(request: Request) -> Response:
    async def parts() -> Any:
        yield b"first"
        await release.wait()
        yield b"second"
    return StreamingResponse(parts())


APP = Starlette(routes=[Route("/small", small, methods=["GET", "HEAD"]), Route("/upload", upload, methods=["POST"]),
                        Route("/streamed", streamed)])


async def exchange(*pieces: bytes) -> list[list[bytes]]:
    """Feed a connection the pieces one at a time, letting the app run after each: the writes seen after each."""
    config = Config(app=APP, http=GuardedHttpToolsProtocol, lifespan="off", log_level="warning")
    config.load()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    seen = []
    for piece in pieces:
        protocol.data_received(piece)
        for _ in range(20):
            await asyncio.sleep(0)
        seen.append(list(transport.writes))
    protocol.connection_lost(None)
    return seen


def test_a_small_answer_leaves_in_one_write_head_and_body_together() -> None:
    [writes] = asyncio.run(exchange(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert len(writes) == 1, writes
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_100_continue_goes_out_before_the_answer_and_alone() -> None:
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    before_body, after_body = asyncio.run(exchange(head, b"abc"))
    assert before_body == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    assert len(after_body) == 2, after_body
    assert after_body[1].startswith(b"HTTP/1.1 200 OK") and after_body[1].endswith(b'{"bytes":3}')


def test_a_head_answer_is_written_though_no_body_follows() -> None:
    [writes] = asyncio.run(exchange(b"HEAD /small HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and writes[0].endswith(b"\r\n\r\n")


def test_a_streamed_answer_sends_its_head_and_each_part_as_it_comes() -> None:
    release.clear()
    [writes] = asyncio.run(exchange(b"GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n"))
    # Its second part never came (the stream waits): the head and the first part were sent all the same.
    assert writes[0].startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in writes[0]
    assert writes[1:] == [b"5\r\nfirst\r\n"]
