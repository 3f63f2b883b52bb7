"""A hostile client, as an attacker would write one, and the images it sends; plus the workers' memory.

Shared by tests/test_hostile.py (a bare `bloodcells serve`) and tests/test_hostile_stack.py (the compose
stack behind nginx). Every exchange is bounded in bytes and time, and talks only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tests.live_server import multipart


@dataclass
class Exchange:
    """What came back: the status (0 for none), the JSON body where there is one, the headers, and the
    seconds from the last byte sent to the answer or the close."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    sent: int = 0

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, raw
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, chunks: Iterable[bytes], wait: float = 40.0, host: str = "127.0.0.1") -> Exchange:
    """Send ``chunks`` (stopping where the server closes), then read until it closes or ``wait`` passes."""
    sent = 0
    with socket.create_connection((host, port), timeout=wait) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        started = time.monotonic()
        raw = b""
        sock.settimeout(wait)
        try:
            while len(raw) < 1_000_000:
                more = sock.recv(65536)
                if not more:
                    break
                raw += more
                status, headers, body = _parse(raw)
                if status and "content-length" in headers and len(body) >= int(headers["content-length"]):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        seconds = time.monotonic() - started
    status, headers, body = _parse(raw)
    return Exchange(status, headers, body, seconds, sent)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: hostile.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post_files(port: int, path: str, field_name: str, payloads: list[bytes], wait: float = 120.0) -> Exchange:
    body, content_type = multipart([(field_name, f"image{i}.png", data) for i, data in enumerate(payloads)])
    return exchange(port, [request_bytes("POST", path, body, {"Content-Type": content_type})], wait)


def get(port: int, path: str, wait: float = 10.0) -> Exchange:
    return exchange(port, [request_bytes("GET", path)], wait)


def idle_sockets(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing; the caller closes them."""
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    return sockets


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# --- images ------------------------------------------------------------------------------------------
def white_png(width: int, height: int) -> bytes:
    """A flat white PNG: a few KB that decode to width x height x 3 bytes."""
    return cv2.imencode(".png", np.full((height, width, 3), 255, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def rgba16_png(width: int, height: int) -> bytes:
    """A transparent 16-bit RGBA PNG: a few hundred KB that decode to 8 bytes a pixel, the most a PNG takes."""
    return cv2.imencode(".png", np.zeros((height, width, 4), np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each PNG colour type, as stored


def png_by_hand(width: int, height: int, depth: int = 8, colour: int = 2, transparency: bytes | None = None) -> bytes:
    """A black PNG of any bit depth and colour type (``colour``: 0 grey, 2 RGB, 3 palette, 4 grey and alpha,
    6 RGBA), with a tRNS chunk of ``transparency`` if given: the kinds OpenCV cannot write."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    row = bytes(-(-width * PNG_CHANNELS[colour] * depth // 8))
    palette = chunk(b"PLTE", bytes(3)) if colour == 3 else b""
    alpha = chunk(b"tRNS", transparency) if transparency is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + palette + alpha + chunk(b"IDAT", zlib.compress((b"\x00" + row) * height, 9)) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny JPEG whose header declares width x height: a small real JPEG with its frame size rewritten,
    which libjpeg decodes to the declared size (the rest gray)."""
    data = bytearray(cv2.imencode(".jpg", np.full((64, 64, 3), 200, np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def jpeg_of_scans(scans: int, width: int = 5000, height: int = 5000) -> bytes:
    """A progressive JPEG claiming width x height, with ``scans`` empty scans (11 bytes each) before its end:
    libjpeg makes a pass over the whole image for each, so a small file decodes for seconds."""
    data = bytearray(cv2.imencode(".jpg", np.full((64, 64, 3), 200, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])
    sof = data.find(b"\xff\xc2")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    # One component, spectral selection 1-63, no successive approximation: a valid AC scan of no data.
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f\x00\x00"
    end = data.rfind(b"\xff\xd9")
    return bytes(data[:end]) + empty_scan * scans + b"\xff\xd9"


def blobs_png(width: int, height: int, spacing: int = 60, radius: int = 19) -> tuple[bytes, int]:
    """Purple stained blobs on a grid, each big enough to be a white cell (over 1,000 px, bigger than a
    platelet clump); the PNG and the blob count."""
    image = np.full((height, width, 3), (232, 226, 236), np.uint8)  # BGR of the smear background
    count = 0
    for y in range(spacing // 2, height - radius, spacing):
        for x in range(spacing // 2, width - radius, spacing):
            cv2.circle(image, (x, y), radius, (192, 82, 118), -1)
            count += 1
    return cv2.imencode(".png", image)[1].tobytes(), count


def png_with_text_chunk(size: int) -> bytes:
    """A valid small PNG with a ``size``-byte compressed text chunk (zTXt) before its pixels."""
    png = white_png(32, 32)
    text = zlib.compress(b"x" * size * 4)[:size]
    chunk_data = b"comment\x00\x00" + text
    chunk = len(chunk_data).to_bytes(4, "big") + b"zTXt" + chunk_data
    chunk += zlib.crc32(b"zTXt" + chunk_data).to_bytes(4, "big")
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def png_with_bad_crc() -> bytes:
    png = bytearray(white_png(32, 32))
    png[29:33] = bytes(b ^ 0xFF for b in png[29:33])  # IHDR's CRC
    return bytes(png)


# --- the workers' memory ----------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class MemoryWatch:
    """Each worker's RSS when idle, and its peak since (VmHWM, reset at the start) over that."""

    pids: list[int]
    idle_kib: dict[int, int] = field(default_factory=dict)

    def start(self) -> MemoryWatch:
        for pid in self.pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
            self.idle_kib[pid] = _status_kib(pid, "VmRSS")
        return self

    def growth_mb(self) -> float:
        """The largest growth of one worker over its idle RSS, in MB."""
        return max(_status_kib(pid, "VmHWM") - self.idle_kib[pid] for pid in self.pids) * 1024 / 1e6


def can_watch_memory() -> bool:
    return Path("/proc/self/clear_refs").exists() and os.access("/proc/self/clear_refs", os.W_OK)
