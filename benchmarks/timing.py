"""The one timer the benchmarks share: the median seconds of a call, by ``torch.utils.benchmark``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def median_seconds(fn: Callable[[], object], repeats: int, min_run_time: float = 0.2) -> float:
    """Median seconds of one call of ``fn``, over about ``repeats`` timed calls.

    ``Timer.timeit(1)`` runs two warm-up calls and times a third; ``blocked_autorange`` then
    times blocks of calls (one call per block when a call takes over ~10 ms) for
    ``max(repeats * that time, min_run_time)`` seconds. It runs in torch's current thread count:
    Timer's own default is one thread, which would undo the scripts' ``--threads``. Times on
    CUDA include a synchronize (Timer's timer does it).
    """
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    first = timer.timeit(1).median
    return timer.blocked_autorange(min_run_time=max(repeats * first, min_run_time)).median
