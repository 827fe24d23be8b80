"""`make fuzz`: the long fuzz run against a platform of its own.

    python -m tests.fuzz --seed 7 --count 100000            # every category, by weight
    python -m tests.fuzz --seed 7 --case 4711 --category grpc-numbers   # replay one case
    python -m tests.fuzz --exclude grpc-undecodable,grpc-invalid-utf8,http-invalid-utf8

Starts PostgreSQL, Redis, the four services as processes and Envoy on free ports (as
`make bench` does; `--configuration embedded` for SQLite and in-process stores), registers
and logs in its people, sends the cases from many threads, then prints the summary by
status (gRPC and HTTP) and by category. Exit status 1 if any case failed (gRPC INTERNAL,
UNKNOWN, DATA_LOSS, UNAVAILABLE or HTTP 5xx), a service logged an ERROR or a traceback,
or a service is no longer SERVING.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import etax_platform  # noqa: F401 - puts generated code on sys.path
from bench.platform import running_platform
from tests.fuzz.generate import CATEGORIES
from tests.fuzz.run import Targets, log_file_findings, not_serving, run
from tests.fuzz.seed import seed_pool


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--count", type=int, default=100_000, help="requests to send")
    parser.add_argument("--case", type=int, help="send only this case (with --category: a replay)")
    parser.add_argument(
        "--category", action="append", choices=sorted(CATEGORIES), help="only these (repeatable)"
    )
    parser.add_argument("--exclude", default="", help="comma-separated categories to leave out")
    parser.add_argument("--threads", type=int, default=24)
    parser.add_argument("--configuration", choices=["production", "embedded"], default="production")
    parser.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--show", type=int, default=20, help="failures to print")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    excluded = {name for name in args.exclude.split(",") if name}
    unknown = excluded - set(CATEGORIES)
    if unknown:
        print(f"unknown categories: {sorted(unknown)}", file=sys.stderr)
        return 2
    categories = [c for c in (args.category or CATEGORIES) if c not in excluded]
    start, count = (args.case, 1) if args.case is not None else (0, args.count)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="etax-fuzz-"))
    print(f"fuzz: seed {args.seed}, {count} requests, workdir {workdir}", flush=True)
    with running_platform(workdir, args.configuration) as platform:
        assert platform.gateway is not None
        targets = Targets(
            {name: process.address for name, process in platform.services.items()},
            platform.gateway,
        )
        logs = [process.log_path for process in platform.services.values()]
        offsets = {path: path.stat().st_size for path in logs}
        pool = seed_pool(platform.gateway)
        step = max(count // 20, 1000)

        def progress(done: int) -> None:
            if done % step == 0:
                print(f"  {done} requests", flush=True)

        summary = run(
            targets,
            pool,
            args.seed,
            count,
            threads=args.threads,
            categories=categories,
            start=start,
            progress=progress,
        )
        summary.not_serving = not_serving(targets)
        summary.not_serving += [
            f"{name}: exited {process.process.returncode}"
            for name, process in platform.services.items()
            if process.process.poll() is not None
        ]
        summary.log_errors, summary.log_warnings = log_file_findings(logs, offsets)
    print(summary.report(args.show))
    print("fuzz: OK" if summary.ok else "fuzz: FAILED")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
