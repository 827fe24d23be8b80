"""A service process under yappi (CPU clock, every thread), for the report's "why".

    python -m bench.profiled services.sms OUT.json

Runs the module as `python -m` would; SIGUSR1 starts profiling every thread, SIGUSR2 stops
it and writes the CPU time per package and the functions with the most CPU time, self and
inclusive, to OUT.json (so start-up and shutdown are not in it). py-spy cannot read this
machine's interpreter here, and cProfile sees one thread only.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
from collections import defaultdict
from pathlib import Path

import yappi  # type: ignore[import-untyped]

# The functions listed, self and inclusive (ETAX_PROFILE_TOP: more, to look further down).
TOP = int(os.environ.get("ETAX_PROFILE_TOP", "25"))
# Names of functions whose callers to list too (comma-separated), to find who runs them.
CALLERS = [name for name in os.environ.get("ETAX_PROFILE_CALLERS", "").split(",") if name]


def _package(module: str) -> str:
    """grpc, sqlalchemy, ... for libraries; services.sms, etax_platform for ours."""
    if "site-packages/" in module:
        return module.split("site-packages/", 1)[1].split("/", 1)[0]
    for ours in ("services/", "etax_platform/"):
        if ours in module:
            rest = module.split(ours, 1)[1]
            return ours.rstrip("/") + ("." + rest.split("/", 1)[0] if "/" in rest else "")
    if module in ("builtins", "") or "/" not in module:
        return "builtins (C calls)"
    return "standard library"


def _where(stat: yappi.YFuncStat) -> str:
    module = stat.module.rsplit("site-packages/", 1)[-1].rsplit("/work/", 1)[-1]
    return f"{stat.name} ({module}:{stat.lineno})"


def _callers(stats: yappi.YFuncStats) -> dict[str, list[list[object]]]:
    """Who calls the functions CALLERS names: caller, time in the callee, calls."""
    found: dict[str, list[list[object]]] = defaultdict(list)
    for stat in stats:
        for child in stat.children:
            if child.name in CALLERS:
                found[f"{child.name} ({child.lineno})"].append(
                    [_where(stat), child.ttot, child.ncall]
                )
    return found


def _write(out: Path) -> None:
    yappi.stop()
    stats = yappi.get_func_stats()
    packages: dict[str, float] = defaultdict(float)
    for stat in stats:
        packages[_package(stat.module)] += stat.tsub
    by_self = sorted(stats, key=lambda s: s.tsub, reverse=True)[:TOP]
    by_total = sorted(stats, key=lambda s: s.ttot, reverse=True)[:TOP]
    partial = out.with_suffix(".partial")
    partial.write_text(
        json.dumps(
            {
                "packages": sorted(packages.items(), key=lambda kv: kv[1], reverse=True),
                "self": [[_where(s), s.tsub, s.ncall] for s in by_self],
                "inclusive": [[_where(s), s.ttot, s.ncall] for s in by_total],
                "callers": _callers(stats),
            },
            ensure_ascii=False,
            indent=1,
        )
    )
    partial.rename(out)  # whole or not at all


def main() -> None:
    module, out = sys.argv[1], Path(sys.argv[2])
    sys.argv = [module]
    yappi.set_clock_type("cpu")
    signal.signal(signal.SIGUSR1, lambda _s, _f: yappi.start(builtins=True, profile_threads=True))
    signal.signal(signal.SIGUSR2, lambda _s, _f: _write(out))
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
