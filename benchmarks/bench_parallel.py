"""Is 2-process data-parallel training faster than 1 at the same global batch; how much of a step is communication?

    python benchmarks/bench_parallel.py                       # default model, adamw/kfac/hybrid, 1 and 2 ranks
    python benchmarks/bench_parallel.py --steps 60 --out benchmarks/results/parallel.md

Each row trains the default `hybrid train` model from the same initialization on the same
global batches (train.batch_size sequences, split over the ranks) with the training step of
`hybrid train` (DDP forward and backward, K-FAC/QNG reductions, clip, step), one torch thread
per process, gloo on CPU. Step times are rank 0's, with a barrier before each step so that
every rank starts together. Communication: the seconds inside `hybrid.optim.reduce`'s
collectives (K-FAC's factor all-reduce and decomposition broadcasts, QNG's metric all-reduce,
each with its wait for the slower rank) and, separately, one all-reduce of a buffer the size of
all gradients timed alone: DDP's share, which DDP overlaps with the backward pass, so an
upper bound. Prints a markdown table and, with ``--out``, writes it with the machine and command.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.data import load_dataset  # noqa: E402
from hybrid.models import HybridGPT  # noqa: E402
from hybrid.optim import build_optimizer  # noqa: E402
from hybrid.optim.reduce import COMM  # noqa: E402
from hybrid.parallel import World, shard, wrap  # noqa: E402
from hybrid.train import train_step  # noqa: E402

OPTIMIZERS = ("adamw", "kfac", "hybrid")
WARMUP = 10  # steps before timing (first calls, allocator, the first factors and decompositions)


def run(cfg: Config, world: World, steps: int) -> dict[str, float]:
    """Time ``steps`` training steps of ``cfg`` on this rank; rank 0's numbers matter."""
    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data, cfg.model.block_size)
    model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit, cfg.execution)
    optimizer = build_optimizer(model, cfg.optim)
    net = wrap(model, world)
    rng = torch.Generator().manual_seed(cfg.train.seed)
    times, comm = [], 0.0
    for step in range(WARMUP + steps):
        batch = shard(dataset.batch("train", cfg.train.batch_size, cfg.model.block_size, rng), world)
        if world.size > 1:
            dist.barrier()
        before, start = COMM["seconds"], time.perf_counter()
        train_step(net, optimizer, batch, cfg.optim.grad_clip)
        if step >= WARMUP:
            times.append(time.perf_counter() - start)
            comm += COMM["seconds"] - before
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ddp = 0.0
    if world.size > 1:  # DDP's all-reduce of every gradient, alone
        flat = torch.zeros(grads)
        samples = []
        for _ in range(20):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(flat)
            samples.append(time.perf_counter() - start)
        ddp = statistics.median(samples)
    mean = statistics.fmean(times)
    return {"mean": mean, "median": statistics.median(times), "comm": comm / steps, "ddp": ddp,
            "tokens_per_s": cfg.train.batch_size * cfg.model.block_size / mean}  # fmt: skip


def rank_main(rank: int, size: int, port: int, steps: int, results: dict) -> None:
    torch.set_num_threads(1)
    if size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    world = World(rank, size, torch.device("cpu"))
    for name in OPTIMIZERS:
        cfg = apply_overrides(Config(), {"optim.name": name})
        row = run(cfg, world, steps)
        if rank == 0:
            results[(name, size)] = row
    if size > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per row (after warm-up)")
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    args = parser.parse_args()

    with mp.Manager() as manager:
        results = manager.dict()
        for size in (1, 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(rank_main, args=(size, port, args.steps, results), nprocs=size, join=True)
        results = dict(results)

    cfg = Config()
    lines = [
        "# Data-parallel training: 1 vs 2 processes at the same global batch",
        "",
        f"Default `hybrid train` model ({cfg.model.quantum} circuit, {cfg.circuit.n_qubits} qubits), global batch "
        f"{cfg.train.batch_size} x {cfg.model.block_size} tokens, optimizer defaults (K-FAC factors and inverses every "
        f"{cfg.optim.kfac.curvature_every} steps, QNG metric every step); {args.steps} timed steps after {WARMUP}, "
        "1 torch thread per process, gloo.",
        "",
        "| optimizer | ranks | mean step (ms) | median step (ms) | tokens/s | speed-up | reduce.py collectives "
        "per step (ms, share) | DDP gradient all-reduce alone (ms, share) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in OPTIMIZERS:
        one = results[(name, 1)]
        for size in (1, 2):
            r = results[(name, size)]
            lines.append(
                f"| {name} | {size} | {1e3 * r['mean']:.1f} | {1e3 * r['median']:.1f} | {r['tokens_per_s']:.0f} | "
                f"{one['mean'] / r['mean']:.2f}x | {1e3 * r['comm']:.1f} ({r['comm'] / r['mean']:.0%}) | "
                f"{1e3 * r['ddp']:.1f} ({r['ddp'] / r['mean']:.0%}) |"
            )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines += [
        "",
        "- Each rank computes half the tokens, but the per-step fixed costs (Python, the optimizer step, "
        "circuit-call overhead, the replicated K-FAC and QNG updates) do not shrink, and on 2 cores shared "
        "with other processes two ranks have one core each at best: here data parallelism is about "
        "correctness and a multi-core or multi-GPU machine, not speed.",
        "- The collectives' time includes each rank's wait for the slower one (other processes' load; QNG's "
        "draw of metric_samples inputs splits unevenly between the ranks' halves), so it bounds the wire time "
        "from above. K-FAC sends its factors on factor steps (every 10) only; QNG sends its metric every step.",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) at the end: {load}",
        f"- command: `python benchmarks/bench_parallel.py --steps {args.steps}"
        + (f" --out {args.out}`" if args.out else "`"),
        f"- date: {time.strftime('%Y-%m-%d')}",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
