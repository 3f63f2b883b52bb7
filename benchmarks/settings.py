"""Service settings compared under the same load, in one run: which one a request costs least under.

    python -m benchmarks.settings --variant slots4:BLOODCELLS_MAX_CONCURRENT_IMAGES=4 \\
        --variant slots1:BLOODCELLS_MAX_CONCURRENT_IMAGES=1 [--rounds 3] [--json]

Each variant is a name and the environment of ``bloodcells serve --workers 2`` (``NAME:VAR=VALUE,VAR=VALUE``;
``NAME:`` alone runs the defaults). ``NAME@REV:...`` serves the code of git revision REV instead of this tree's,
from a temporary copy of its files (``git archive``): ``--variant now: --variant before@bfc5d8a:`` compares two revisions.
The variants take turns, ``--rounds`` times, so that a machine that slows down or speeds up meanwhile weighs
on each alike. Each turn starts the server, warms it up, then
runs wrk at 32 keep-alive connections and at 1, posting the reference image to /classify (shedding off:
this measures capacity). Printed per variant: the medians over the rounds of requests/s, p99 latency and server
CPU per request at 32 connections, and of p50 latency and server CPU per request at one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Body, free_port, revision_tree, run_wrk, service_argv, start_server, stop_server
from benchmarks.guard import GUARD_WORKERS, THROUGHPUT_CLIENTS, test_image


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str]
    rev: str | None = None  # serve this git revision's code rather than this tree's


def parse_variant(text: str) -> Variant:
    label, _, assignments = text.partition(":")
    name, _, rev = label.partition("@")
    if not name or (label.count("@") and not rev):
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME[@REV]:VAR=VALUE[,VAR=VALUE] (NAME: alone for the defaults)")
    env = {}
    for assignment in filter(None, assignments.split(",")):
        variable, equals, value = assignment.partition("=")
        if not equals or not variable:
            raise argparse.ArgumentTypeError(f"{assignment!r} in {text!r} is not VAR=VALUE")
        env[variable] = value
    return Variant(name, env, rev or None)


def measure(env: dict[str, str], body: Body, seconds: float, tree: Path = REPO) -> dict[str, float]:
    port = free_port()
    server = start_server("settings", service_argv(port, GUARD_WORKERS), port, GUARD_WORKERS,
                          env={"BLOODCELLS_MAX_PENDING": "1024", **env}, cwd=tree)
    try:
        run_wrk(server.url + "/classify", body, THROUGHPUT_CLIENTS, 2.0)  # warm-up
        loaded = run_wrk(server.url + "/classify", body, THROUGHPUT_CLIENTS, seconds, server=server)
        one = run_wrk(server.url + "/classify", body, 1, seconds, server=server)
    finally:
        stop_server(server)
    if loaded["error_count"] or one["error_count"]:
        raise RuntimeError(f"requests failed with {env}: {loaded['errors']} {one['errors']}")
    return {"c32_requests_per_s": loaded["requests_per_s"], "c32_server_cpu_ms": loaded["server_cpu_ms_per_request"],
            "c32_p99_ms": loaded["latency_ms"]["p99"],
            "c1_p50_ms": one["latency_ms"]["p50"], "c1_server_cpu_ms": one["server_cpu_ms_per_request"]}


def compare(variants: list[Variant], rounds: int, seconds: float) -> dict[str, Any]:
    image, source = test_image()
    body = Body.write("settings", [("file", "cell.jpeg", image)])
    samples: dict[str, list[dict[str, float]]] = {variant.name: [] for variant in variants}
    with ExitStack() as stack:
        stack.callback(body.path.unlink, missing_ok=True)
        trees = {variant.name: stack.enter_context(revision_tree(variant.rev)) if variant.rev else REPO
                 for variant in variants}
        for _ in range(rounds):
            for variant in variants:
                samples[variant.name].append(measure(variant.env, body, seconds, trees[variant.name]))
    return {"image": source, "rounds": rounds, "seconds": seconds,
            "variants": {v.name: {"env": v.env, "rev": v.rev,
                                  "median": {key: statistics.median(s[key] for s in samples[v.name])
                                             for key in samples[v.name][0]},
                                  "rounds": samples[v.name]} for v in variants}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.settings", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME:VAR=VALUE[,VAR=VALUE], the server's environment (repeat: at least two)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="each wrk measurement")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if len(args.variant) < 2:
        parser.error("give at least two --variant to compare")
    result = compare(args.variant, args.rounds, args.seconds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['image']}, medians of {args.rounds} rounds, variants alternating:")
    for name, variant in result["variants"].items():
        m = variant["median"]
        print(f"  {name:12s} 32 clients: {m['c32_requests_per_s']:7.1f} req/s, p99 {m['c32_p99_ms']:.1f} ms, server CPU "
              f"{m['c32_server_cpu_ms']:.3f} ms/request; 1 client: p50 {m['c1_p50_ms']:.3f} ms, "
              f"server CPU {m['c1_server_cpu_ms']:.3f} ms/request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
