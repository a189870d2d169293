"""The timing rule every benchmark here shares: the median of repeated calls after a warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional


def median_seconds(
    function: Callable[[], object],
    repeats: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    synchronize: Optional[Callable[[], None]] = None,
) -> float:
    """Median seconds of ``repeats`` calls of ``function`` on ``clock``, after one warm-up call.

    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs before each reading of the clock, so
    that work queued on an accelerator is counted in the call that queued it.
    """
    function()
    times = []
    for _ in range(repeats):
        if synchronize is not None:
            synchronize()
        start = clock()
        function()
        if synchronize is not None:
            synchronize()
        times.append(clock() - start)
    return statistics.median(times)
