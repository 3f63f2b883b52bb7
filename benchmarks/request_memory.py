"""What one heavy request adds to a worker's memory: the README's per-request bound, measured.

    python -m benchmarks.request_memory [--json]

Starts ``bloodcells serve --workers 1`` (so that every request lands on the one worker measured, the
serving process itself), then
for each case resets the worker's peak RSS (/proc/<pid>/clear_refs), sends the request (from several
clients at once where the case says so), and reads the peak (VmHWM) over the idle RSS before it. The
cases are those of tests/test_hostile.py, made by the same code (tests/hostile.py). Linux only. Written to
benchmarks/results/request_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import RESULTS_DIR, free_port, service_argv, start_server, stop_server
from tests import hostile


def cases() -> list[tuple[str, str, str, list[bytes], int]]:
    """(name, path, form field, files, clients sending it at once)."""
    huge_png = hostile.white_png(5000, 5000)
    claimed = hostile.jpeg_claiming(5000, 5000)
    blobs, count = hostile.blobs_png(2000, 2000)
    # 64 MiB decoded each: what took no turns in a worker before LARGE_DECODE_BYTES came down to 16 MiB.
    below_turns = hostile.rgba16_png(2896, 2896)
    return [
        ("one 5000x5000 PNG", "/classify", "file", [huge_png], 1),
        ("one 3536x3535 16-bit RGBA PNG (the most a PNG may decode to)", "/classify", "file",
         [hostile.rgba16_png(3536, 3535)], 1),
        ("one 5000x5000 16-bit RGBA PNG (over that: 413)", "/classify", "file", [hostile.rgba16_png(5000, 5000)], 1),
        ("4 x 5000x5000 PNG (the request budget)", "/classify/batch", "files", [huge_png] * 4, 1),
        ("16 x 5000x5000 PNG (over the budget: 413)", "/classify/batch", "files", [huge_png] * 16, 1),
        ("4 x 8 KB JPEG claiming 5000x5000", "/classify/batch", "files", [claimed] * 4, 1),
        (f"2000x2000 PNG with {count} cells", "/classify", "file", [blobs], 1),
        (f"16 x 2000x2000 PNG with {count} cells", "/classify/batch", "files", [blobs] * 16, 1),
        ("4 clients at once, each one 2896x2896 16-bit RGBA PNG", "/classify", "file", [below_turns], 4),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    port = free_port()
    server = start_server("request-memory", service_argv(port, 1), port, 1)
    rows = []
    try:
        # With one worker, uvicorn serves in the process started: it is the worker.
        watch = hostile.MemoryWatch([server.process.pid])
        for name, path, field, payloads, clients in cases():
            watch.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                answers = list(pool.map(hostile.post_files, [port] * clients, [path] * clients, [field] * clients,
                                        [payloads] * clients))
            answer = max(answers, key=lambda a: a.status)  # the worst, where the clients' answers differ
            rows.append({"case": name, "status": answer.status, "seconds": round(time.perf_counter() - started, 2),
                         "answer_bytes": len(answer.body), "idle_rss_mb": round(watch.idle_kib[watch.pids[0]] / 1024, 1),
                         "growth_mb": round(watch.growth_mb(), 1)})
    finally:
        stop_server(server)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "request_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| case | status | seconds | answer bytes | worker idle RSS MB | peak growth MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['status']} | {row['seconds']} | {row['answer_bytes']:,} | "
              f"{row['idle_rss_mb']} | {row['growth_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
