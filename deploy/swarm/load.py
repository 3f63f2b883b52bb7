#!/usr/bin/env python3
"""Steady load on ``POST /classify``, recording every request: the load client of deploy/test-swarm.sh.

    python3 deploy/swarm/load.py --url http://127.0.0.1:18600 --image cell.jpeg \
        --connections 6 --duration 20 [--rate 100] [--warmup 2] [--bind-from 127.0.0.10] [--output out.json]

Standard library only (it runs on the host, outside the project's environment, or in any container
with Python 3.8+). Each of ``--connections`` threads holds one keep-alive HTTP/1.1 connection
(http.client) and sends the same multipart upload again and again for ``--duration`` seconds or
until SIGTERM / SIGINT (a request in flight then finishes and counts): as fast as the answers come,
or paced to ``--rate`` requests/s in all (steady load, below nginx's per-client limit of 1,000 r/s).
Every request's status and latency is recorded; a request counts as failed when it answers anything
but 200 or raises (connection refused or reset, timeout, malformed answer); after an exception the
thread opens a new connection.

``--bind-from ADDRESS``: connection i is made from ADDRESS + i (e.g. 127.0.0.10, .11, ...), so that
nginx's per-client-address limits (1,000 requests/s each) see several clients. Only where those
addresses are local and reach the server: on loopback, inside the proxy's network namespace.

``--warmup S``: the first S seconds are not measured (requests/s and latencies are of the rest); their
failures still count.

Prints one JSON object (and writes it to ``--output``): requests, ok, failed, requests/s (answered
200 per second of the measured time), latency percentiles in ms, how many took 1 s or more
(``slow``, failed or not), the statuses and exception types counted, and
the first failures with their time since the start, connection and X-Request-ID, so that they can
be found in the service's and nginx's logs. Exit status 0 whatever the failures (the caller judges).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import math
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

MAX_FAILURES_LISTED = 50
SLOW_SECONDS = 1.0


def multipart(image: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{image.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    body = head + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Recorder:
    """Every request's outcome, from every thread."""

    def __init__(self, connections: int, measure_from: float) -> None:
        self.connections = connections
        self.measure_from = measure_from
        self.lock = threading.Lock()
        self.latencies_ok: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.exceptions: Counter[str] = Counter()
        self.failures: list[dict[str, object]] = []
        self.failed = 0
        self.requests = 0
        self.slow = 0

    def record(self, start: float, t0: float, seconds: float, status: int | None,
               error: BaseException | None, connection: int, request_id: str, body: bytes) -> None:
        with self.lock:
            self.requests += 1
            if seconds >= SLOW_SECONDS:
                self.slow += 1
            if status is not None:
                self.statuses[str(status)] += 1
            if error is not None:
                self.exceptions[type(error).__name__] += 1
            if status == 200 and error is None:
                if t0 >= self.measure_from:
                    self.latencies_ok.append(seconds)
                return
            self.failed += 1
            if len(self.failures) < MAX_FAILURES_LISTED:
                self.failures.append({
                    "t": round(t0 - start, 3),
                    "connection": connection,
                    "request_id": request_id,
                    "status": status,
                    "error": None if error is None else f"{type(error).__name__}: {error}"[:200],
                    "body": body[:200].decode("utf-8", "replace") if status is not None else None,
                    "ms": round(seconds * 1000, 1),
                })


def worker(index: int, url: str, path: str, body: bytes, content_type: str, timeout: float,
           interval: float, source: str | None, start: float, deadline: float,
           stop: threading.Event, recorder: Recorder) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    connection: http.client.HTTPConnection | None = None
    number = 0
    # paced: the threads' sends spread evenly over each interval; a late send goes at once, but a
    # thread never catches up more than one interval (no bursts after a stall)
    next_send = start + interval * index / max(1, recorder.connections)
    while not stop.is_set() and time.monotonic() < deadline:
        if interval > 0:
            now = time.monotonic()
            if next_send > now:
                stop.wait(next_send - now)
                if stop.is_set() or time.monotonic() >= deadline:
                    break
            next_send = max(next_send + interval, time.monotonic() - interval)
        number += 1
        request_id = f"load-{index}-{number}"
        if connection is None:
            connection = http.client.HTTPConnection(
                host, port, timeout=timeout, source_address=(source, 0) if source else None)
        status: int | None = None
        answer = b""
        error: BaseException | None = None
        t0 = time.monotonic()
        try:
            connection.request("POST", path, body=body, headers={
                "Content-Type": content_type, "X-Request-ID": request_id, "Connection": "keep-alive"})
            response = connection.getresponse()
            answer = response.read()
            status = response.status
            if response.will_close:  # nginx's keepalive_requests, or an error answer
                connection.close()
                connection = None
        except Exception as exc:  # every failure counts, whatever its kind  # noqa: BLE001
            error = exc
            connection.close()
            connection = None
        recorder.record(start, t0, time.monotonic() - t0, status, error, index, request_id, answer)
    if connection is not None:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:18600")
    parser.add_argument("--image", required=True, type=Path, help="the JPEG to upload")
    parser.add_argument("--connections", type=int, default=6, help="threads, one connection each")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds, after the warm-up (SIGTERM ends it sooner)")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds at the start that are not measured (their failures count)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="requests/s in all, paced (default 0: as fast as the answers come)")
    parser.add_argument("--bind-from", default=None, metavar="ADDRESS",
                        help="connection i binds to this IPv4 address + i (distinct client addresses)")
    parser.add_argument("--mode", default=None, help="?mode= of /classify (default: the service's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--output", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)

    body, content_type = multipart(args.image)
    path = "/classify" + (f"?mode={args.mode}" if args.mode else "")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    interval = args.connections / args.rate if args.rate > 0 else 0.0
    sources = [str(ipaddress.IPv4Address(args.bind_from) + index) if args.bind_from else None
               for index in range(args.connections)]
    start = time.monotonic()
    recorder = Recorder(args.connections, start + args.warmup)
    deadline = start + args.warmup + args.duration
    threads = [threading.Thread(target=worker, daemon=True, args=(
        index, args.url, path, body, content_type, args.timeout, interval, sources[index],
        start, deadline, stop, recorder))
        for index in range(args.connections)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        # a short join, so that the signal handler runs promptly in the main thread
        for thread in threads:
            thread.join(0.1)
    elapsed = time.monotonic() - start
    measured = elapsed - args.warmup

    latencies = sorted(recorder.latencies_ok)
    ok = len(latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    summary = {
        "url": args.url + path,
        "connections": args.connections,
        "rate": args.rate or None,
        "bind_from": args.bind_from,
        "seconds": round(elapsed, 2),
        "warmup_seconds": args.warmup,
        "requests": recorder.requests,
        "ok": recorder.statuses.get("200", 0),
        "failed": recorder.failed,
        "rps": round(ok / measured, 1) if measured > 0 else 0.0,
        "latency_ms": {"p50": ms(percentile(latencies, 0.50)), "p90": ms(percentile(latencies, 0.90)),
                       "p99": ms(percentile(latencies, 0.99)),
                       "max": ms(latencies[-1] if latencies else None)},
        "slow": recorder.slow,
        "statuses": dict(sorted(recorder.statuses.items())),
        "exceptions": dict(sorted(recorder.exceptions.items())),
        "failures": recorder.failures,
    }
    text = json.dumps(summary)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
