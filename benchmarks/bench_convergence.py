"""How fast does each optimizer reach AdamW's final validation loss on the default hybrid model?

    python benchmarks/bench_convergence.py                        # adamw, kfac, qng, hybrid x seeds 0 1 2, 1500 steps
    python benchmarks/bench_convergence.py --steps 300 --seeds 0 --workers 1 --out runs/conv_smoke

Every optimizer trains the default ``hybrid train`` model on the built-in corpus with its
default settings, once per seed, through ``hybrid.sweep.sweep`` (parallel workers, one torch
thread each; finished runs are skipped and a killed run resumes from its checkpoint, so the
same command continues an interrupted benchmark). The target is AdamW's final validation loss,
averaged over its seeds. From each run's ``metrics.csv`` (cumulative ``seconds`` and
``val_loss`` per evaluation) it reads the steps and wall-clock seconds to the target,
interpolated linearly between the two evaluations around the first crossing; a run that never
gets there counts as not reached. Writes ``convergence.md`` (table, machine, versions, command,
date, load average) and ``convergence.png`` (validation loss against step and against
seconds: mean over seeds with a min-max band) to ``--results``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pennylane as qml
import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.sweep import RESULTS, make_grid, sweep  # noqa: E402
from hybrid.tables import read_table  # noqa: E402
from hybrid.train import METRICS  # noqa: E402

OPTIMIZERS = ("adamw", "kfac", "qng", "hybrid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config().train.steps, help="training steps per run")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per optimizer")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--loose-target", type=float, default=1.0, help="a second target (nats) most runs reach")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"), help="folder of the sweep's runs")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="where the .md and .png go")
    args = parser.parse_args()
    if "adamw" not in args.optimizers:
        parser.error("--optimizers must include adamw: its final validation loss is the target")

    load_before = os.getloadavg()
    base = apply_overrides(Config(), {"train.steps": args.steps, "train.eval_every": args.eval_every})
    grid = make_grid([base.circuit.n_qubits], [base.circuit.n_layers], [base.model.n_embd], args.optimizers, args.seeds)
    trained_before = len(read_table(args.out / RESULTS))
    sweep(base, grid, args.out, workers=args.workers)
    load_file = args.out / "load.txt"  # the load while runs trained, kept for a report rewritten later
    if len(read_table(args.out / RESULTS)) > trained_before:
        load_file.write_text(f"{_load(load_before)} at the start, {_load(os.getloadavg())} at the end")
    load = load_file.read_text(encoding="utf-8") if load_file.exists() else "unknown"
    curves = {
        opt: [read_table(args.out / "runs" / p.key / METRICS) for p in grid if p.optimizer == opt]
        for opt in args.optimizers
    }
    target = statistics.fmean(rows[-1]["val_loss"] for rows in curves["adamw"])
    table = report(curves, target, args, load)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "convergence.md").write_text(table, encoding="utf-8")
    plot(curves, target, args.results / "convergence.png")


def time_to_target(rows: list[dict], target: float) -> tuple[float, float]:
    """(step, seconds) at which ``val_loss`` first reaches ``target``, linear between the two
    evaluations around the crossing; ``(nan, nan)`` when it never does."""
    for before, row in zip([None, *rows[:-1]], rows, strict=True):
        if row["val_loss"] <= target:
            if before is None:
                return row["step"], row["seconds"]
            w = (before["val_loss"] - target) / (before["val_loss"] - row["val_loss"])  # in (0, 1]
            return (
                before["step"] + w * (row["step"] - before["step"]),
                before["seconds"] + w * (row["seconds"] - before["seconds"]),
            )
    return math.nan, math.nan


def spread(values: list[float], digits: int) -> str:
    """``mean [min, max]`` of the finite values, ``n/N`` when some are missing; ``-`` if none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "not reached"
    text = f"{statistics.fmean(finite):.{digits}f} [{min(finite):.{digits}f}, {max(finite):.{digits}f}]"
    return text if len(finite) == len(values) else f"{text} ({len(finite)}/{len(values)} reached)"


def ratio(values: list[float], reference: list[float]) -> str:
    """Mean of ``values`` over mean of ``reference``, each over its finite entries."""
    v, r = [x for x in values if math.isfinite(x)], [x for x in reference if math.isfinite(x)]
    return f"{statistics.fmean(v) / statistics.fmean(r):.2f}x" if v and r else "-"


def report(curves: dict[str, list[list[dict]]], target: float, args, load: str) -> str:
    hits = {opt: [time_to_target(rows, target) for rows in runs] for opt, runs in curves.items()}
    steps = {opt: [s for s, _ in h] for opt, h in hits.items()}
    seconds = {opt: [t for _, t in h] for opt, h in hits.items()}
    loose = {opt: [time_to_target(rows, args.loose_target)[0] for rows in runs] for opt, runs in curves.items()}
    lines = [
        "| optimizer | final val loss | std | steps to target | over adamw | seconds to target | over adamw "
        "| run seconds (1500 steps + evals) | steps to LOOSE | over adamw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for opt, runs in curves.items():
        finals = [rows[-1]["val_loss"] for rows in runs]
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        lines.append(
            f"| {opt} | {spread(finals, 3)} | {std:.3f} "
            f"| {spread(steps[opt], 0)} | {ratio(steps[opt], steps['adamw'])} "
            f"| {spread(seconds[opt], 0)} | {ratio(seconds[opt], seconds['adamw'])} "
            f"| {spread([rows[-1]['seconds'] for rows in runs], 0)} "
            f"| {spread(loose[opt], 0)} | {ratio(loose[opt], loose['adamw'])} |"
        )
    lines[0] = lines[0].replace("1500", str(args.steps)).replace("LOOSE", f"{args.loose_target:.2f} nats")
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    command = "python benchmarks/bench_convergence.py " + " ".join(sys.argv[1:])
    return "\n".join([
        "# Convergence on the built-in corpus: steps and seconds to AdamW's final validation loss",
        "",
        f"Default `hybrid train` model and settings (quantum head, {Config().circuit.n_qubits} qubits, "
        f"batch 32 x 32 tokens), {args.steps} steps, evaluation every {args.eval_every}, seeds "
        f"{', '.join(map(str, args.seeds))}. Target: AdamW's final validation loss, mean over its seeds, "
        f"**{target:.4f}** nats/char. Cells: mean [min, max] over seeds; steps and seconds interpolated "
        "linearly between the evaluations around the first crossing (a seed that never gets there is left "
        f"out of the mean and counted); the last two columns use a looser target, {args.loose_target:.2f} nats/char. "
        "Seconds are cumulative wall-clock including evaluations; "
        f"{args.workers} runs train at a time, one torch thread each. Plot: [convergence.png](convergence.png).",
        "",
        *lines,
        "",
        f"- machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores; load average (1, 5, 15 min) "
        f"{load} of the training (other processes share the cores)",
        f"- versions: torch {torch.__version__}, pennylane {qml.__version__}, Python {platform.python_version()}",
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d')}",
        "",
    ])  # fmt: skip


def plot(curves: dict[str, list[list[dict]]], target: float, png_path: Path) -> Figure:
    """Validation loss against step and against seconds: mean over seeds, min-max band."""
    fig = Figure(figsize=(11, 4))
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    for i, (opt, runs) in enumerate(curves.items()):
        n = min(len(rows) for rows in runs)  # evaluations every run has (all of them once finished)
        step = [runs[0][k]["step"] for k in range(n)]
        val = [[rows[k]["val_loss"] for rows in runs] for k in range(n)]  # (evals, seeds)
        sec = [statistics.fmean(rows[k]["seconds"] for rows in runs) for k in range(n)]
        mean, lo, hi = [statistics.fmean(v) for v in val], [min(v) for v in val], [max(v) for v in val]
        for ax, x in ((by_step, step), (by_time, sec)):
            ax.plot(x, mean, color=f"C{i}", label=f"{opt} ({len(runs)} seeds)")
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.2, linewidth=0)
    for ax, label in ((by_step, "step"), (by_time, "wall-clock seconds (mean over seeds)")):
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f} (AdamW final)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    by_step.set_ylabel("validation loss (nats / character)")
    by_step.set_ylim(top=min(3.5, by_step.get_ylim()[1]))
    by_step.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return fig


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.1f}" for x in load)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


if __name__ == "__main__":
    main()
