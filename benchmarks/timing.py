"""Shared timing helper of the benchmarks."""

import statistics
import time
from collections.abc import Callable


def compare(ours: Callable[[], object], theirs: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of each callable, timed in alternating order so that drift in machine speed hits both alike."""
    ours(), theirs()  # warm-up
    times = {ours: [], theirs: []}
    for round_index in range(rounds):
        for fn in (ours, theirs) if round_index % 2 == 0 else (theirs, ours):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[ours]), statistics.median(times[theirs])
