"""The collectives the preconditioners need under data-parallel training, and no-ops without it.

    rank_and_size()                        (rank, world size); (0, 1) without a process group
    weighted_mean(values, weights)         sum_r w_r x_r / sum_r w_r over ranks (K-FAC's A and G)
    sum_(tensors)                          in place: the sum over ranks (QNG's weighted metrics)
    row_offset(n, device)                  where this rank's n rows start among all ranks' rows
    share_from_owners(results, owners, like)   results[k] of rank owners[k] on every rank

DDP averages gradients; curvature statistics come from each rank's own inputs, so the
preconditioners reduce them here, at the one place each computes them. Each call packs what
it sends into one buffer per (dtype, device), so a K-FAC step sends one all-reduce for all
its factors. ``hybrid.parallel`` (process group, batch split) sits above and uses these too.
``local_only()`` turns them off: a diagnostic that rank 0 runs alone must not wait for the others.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

_local = [False]  # inside local_only()
COMM = {"seconds": 0.0, "calls": 0}  # time spent in these collectives, for benchmarks (waits included)


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) without an initialized process group."""
    if _local[0] or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, every helper here acts as if this process were alone (rank 0 of 1)."""
    before, _local[0] = _local[0], True
    try:
        yield
    finally:
        _local[0] = before


def _timed(op, *args, **kwargs):
    start = time.perf_counter()
    result = op(*args, **kwargs)
    COMM["seconds"] += time.perf_counter() - start
    COMM["calls"] += 1
    return result


def sum_(tensors: list[torch.Tensor]) -> None:
    """Replace every tensor by its sum over ranks, in place: one all-reduce per (dtype, device)."""
    if rank_and_size()[1] == 1 or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])  # (sum of numels,)
        _timed(dist.all_reduce, flat)
        for t, part in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(part.view_as(t))


def weighted_mean(
    values: dict[Hashable, tuple[torch.Tensor, ...]], weights: dict[Hashable, tuple[float, ...]]
) -> dict[Hashable, tuple[torch.Tensor, ...]]:
    """``sum_r w_r x_r / sum_r w_r`` over ranks for every tensor of ``values``, weighted by the
    matching entry of ``weights`` (e.g. the rows a factor averages). Every rank passes the same
    keys and shapes; a rank without data for a key passes zeros with weight 0. Keys whose
    total weight is 0 are dropped."""
    keys = list(values)
    scaled = [x * w for k in keys for x, w in zip(values[k], weights[k], strict=True)]
    like = scaled[0] if scaled else torch.zeros(())
    totals = torch.tensor([float(w) for k in keys for w in weights[k]], dtype=torch.float64, device=like.device)
    sum_([*scaled, totals])
    out, i = {}, 0
    for k in keys:
        n = len(values[k])
        if (totals[i : i + n] > 0).all():
            out[k] = tuple((x / w).to(x.dtype) for x, w in zip(scaled[i : i + n], totals[i : i + n].tolist(),
                                                               strict=True))  # fmt: skip
        i += n
    return out


def row_offset(n: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(offset, total)``: this rank's ``n`` rows are rows ``offset .. offset + n`` of the
    ``total`` rows of all ranks, in rank order (the global batch, split in order)."""
    rank, size = rank_and_size()
    if size == 1:
        return 0, n
    counts = torch.zeros(size, dtype=torch.float64, device=device)
    counts[rank] = n
    sum_([counts])
    sizes = [int(c) for c in counts.tolist()]
    return sum(sizes[:rank]), sum(sizes)


def share_from_owners(
    results: dict[Hashable, tuple[torch.Tensor, ...] | None],
    owners: dict[Hashable, int],
    like: dict[Hashable, tuple[torch.Tensor, ...]],
) -> dict[Hashable, tuple[torch.Tensor, ...] | None]:
    """Every rank gets, for each key of ``owners``, the result its owner computed alone
    (None: it failed). ``results`` holds this rank's own keys; ``like`` gives every key's
    shapes, dtypes and device. One broadcast per owning rank, bit for bit."""
    rank, size = rank_and_size()
    if size == 1:
        return dict(results)
    out = {}
    for src in range(size):
        keys = [k for k in owners if owners[k] == src]
        if not keys:
            continue
        device = like[keys[0]][0].device
        parts = []
        for k in keys:
            got = results.get(k) if src == rank else None
            parts.append(torch.full((1,), float(got is not None), dtype=torch.float64, device=device))
            parts += [(got[i] if got is not None else torch.zeros_like(t)).to(device, torch.float64).reshape(-1)
                      for i, t in enumerate(like[k])]  # fmt: skip
        flat = torch.cat(parts)  # (flag and values of each of src's keys,)
        _timed(dist.broadcast, flat, src=src)
        i = 0
        for k in keys:
            ok, i = bool(flat[i] > 0), i + 1
            tensors = []
            for t in like[k]:
                tensors.append(flat[i : i + t.numel()].view(t.shape).to(t.dtype))
                i += t.numel()
            out[k] = tuple(tensors) if ok else None
    return out
