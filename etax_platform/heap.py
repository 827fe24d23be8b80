"""The cyclic garbage collector's settings for a long-running service process.

A service builds at start what lives as long as the process (modules, protobuf
descriptors, settings, pools, keyrings, caches), then serves calls whose objects die within
the call, almost all of them freed by reference counting. On Python's defaults the
collector walks that start-up heap in every full collection: 2–4 collections of about
90 ms per 8 s under load, each one a pause for every call in flight (p99s of 134–248 ms
against p90s of 48–134 in `bench/analysis.md`'s A/B runs), and a young collection every
700 allocations.
"""

from __future__ import annotations

import gc

# Allocations between young collections (Python's default is 700). A call's garbage is
# mostly gone before a collection sees it, so fewer collections find the same cycles.
YOUNG_THRESHOLD = 10_000


def settle_after_start() -> None:
    """Moves what start-up built out of the collector's reach (`gc.freeze`: no later
    collection walks it) and widens the young generation to YOUNG_THRESHOLD. Once per
    process, after its server has started; the older generations keep their defaults."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
