"""How much do K-FAC, QNG and hybrid training steps cost next to an AdamW step on the default hybrid model?

    python benchmarks/bench_kfac.py                      # default `hybrid train` model, 3 rounds x 100 steps
    python benchmarks/bench_kfac.py --rounds 5 --steps 200 --out benchmarks/results/kfac.md

Every optimizer trains its own copy of the same model (same initialization, same batches)
with the full training step of ``hybrid train`` (forward, backward, clip, step). The
optimizers take turns, one window of ``--steps`` steps each per round, so that load from
other processes spreads over all of them. K-FAC refreshes its factors every 10 steps and
decomposes them every 50 (the goal: at most 1.3x AdamW); two more rows decompose every 10
steps, as the defaults do. QNG refreshes its metric every step (its default). In the
every-10 rows each factor step also decomposes. Prints a markdown table and, with
``--out``, writes it with the machine, versions and command.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.data import load_dataset  # noqa: E402
from hybrid.models import HybridGPT  # noqa: E402
from hybrid.optim import OPTIMIZERS, build_optimizer  # noqa: E402
from hybrid.train import train_step  # noqa: E402

# row label -> config overrides (on top of SCHEDULE)
VARIANTS = {
    "adamw": {"optim.name": "adamw"},
    "kfac": {"optim.name": "kfac"},
    "kfac, cholesky": {"optim.name": "kfac", "optim.kfac.inverse": "cholesky"},
    "kfac, fisher=mc": {"optim.name": "kfac", "optim.kfac.fisher": "mc"},
    "kfac, graft": {"optim.name": "kfac", "optim.kfac.graft": True, "optim.kfac.lr": 3e-3},
    "qng": {"optim.name": "qng"},
    "hybrid": {"optim.name": "hybrid"},
    "muon": {"optim.name": "muon"},
    "muon_qng": {"optim.name": "muon_qng"},
    # Adam in K-FAC's eigenbasis: factors every 10 steps, bases every 50 (its defaults)
    "eigen_adam": {"optim.name": "eigen_adam"},
    "eigen_hybrid (eigen_adam + qng)": {"optim.name": "eigen_hybrid"},
    # the shipped defaults decompose every 10 steps (stale inverses stall early training)
    "kfac, inverses every 10 (default)": {"optim.name": "kfac", "optim.kfac.inverse_every": 10},
    "hybrid, inverses every 10 (default)": {"optim.name": "hybrid", "optim.kfac.inverse_every": 10},
}
SCHEDULE = {"optim.kfac.curvature_every": 10, "optim.kfac.inverse_every": 50}
WARMUP = 10  # steps before timing: first calls, allocator, first factors; keeps the 10/50 phases aligned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns per optimizer")
    parser.add_argument("--steps", type=int, default=100, help="steps per turn (a multiple of 50 keeps phases equal)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    variants = {k: v for k, v in VARIANTS.items() if v["optim.name"] in OPTIMIZERS}
    base = Config()
    dataset = load_dataset(base.data, base.model.block_size)
    runs = {}
    for label, overrides in variants.items():
        cfg = apply_overrides(base, {**SCHEDULE, **overrides})
        torch.manual_seed(0)
        model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit)
        runs[label] = (model, build_optimizer(model, cfg.optim), torch.Generator().manual_seed(0), [])

    def turn(label, steps):
        model, optimizer, batches, times = runs[label]
        for _ in range(steps):
            batch = dataset.batch("train", base.train.batch_size, base.model.block_size, batches)
            start = time.perf_counter()
            train_step(model, optimizer, batch, base.optim.grad_clip)
            times.append(time.perf_counter() - start)

    for label in runs:
        turn(label, WARMUP)
        runs[label][3].clear()
    with tqdm(total=args.rounds * len(runs) * args.steps, unit="step", desc="bench") as bar:
        for _ in range(args.rounds):
            for label in runs:
                turn(label, args.steps)
                bar.update(args.steps)

    table = report(runs, args)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table, encoding="utf-8")


def report(runs, args) -> str:
    reference = statistics.fmean(runs["adamw"][3])
    lines = [
        "| optimizer | mean step (ms) | over adamw | median: plain step (ms) | "
        "factor step (every 10) | + decomposition (every 50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, (*_, times) in runs.items():
        phase = {"plain": [], "factors": [], "decomposition": []}
        for k, t in enumerate(times, start=WARMUP):  # optimizer step k
            phase["decomposition" if k % 50 == 0 else "factors" if k % 10 == 0 else "plain"].append(t)
        mean = statistics.fmean(times)
        median = {key: f"{1e3 * statistics.median(ts):.1f}" if ts else "-" for key, ts in phase.items()}
        lines.append(
            f"| {label} | {1e3 * mean:.1f} | {mean / reference:.2f}x | {median['plain']} | "
            f"{median['factors']} | {median['decomposition']} |"
        )
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    command = "python benchmarks/bench_kfac.py " + " ".join(sys.argv[1:])
    return "\n".join([
        "# K-FAC, QNG and hybrid step time on the default hybrid model",
        "",
        f"Default `hybrid train` model (quantum head, {Config().circuit.n_qubits} qubits, batch 32 x 32 tokens); "
        "K-FAC factors every 10 steps, decompositions every 50 unless the row says otherwise (in those rows "
        "the factor-step column includes a decomposition); QNG metric every step. "
        f"{args.rounds} rounds x {args.steps} steps per optimizer, interleaved.",
        "",
        *lines,
        "",
        f"- machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores, {args.threads} torch threads; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(other processes share the cores; the interleaved turns spread their load over all rows)",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
    ])  # fmt: skip


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    main()
