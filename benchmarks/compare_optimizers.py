"""Which optimizer reaches a lower validation loss, once each is tuned with the same budget?

Runs ``hybrid tune`` for every optimizer at two batch sizes (fewer steps at the larger), then
reads the final multi-seed runs and writes ``<out>/comparison.md`` and one loss-curve plot per
batch size: final val loss mean and std, Welch's t-test against tuned AdamW, and the steps and
wall-clock seconds each optimizer needs to reach tuned AdamW's mean final val loss.

    python benchmarks/compare_optimizers.py                      # small defaults: ~1 hour on 2 cores
    python benchmarks/compare_optimizers.py --trials 30 --steps 1500 --steps-large 500   # full size

Rerunning the command continues the studies (``hybrid tune`` resumes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hybrid.config import load_config
from hybrid.tables import read_table

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = "adamw,muon,kfac,qng,hybrid,eigen_adam,eigen_hybrid"
FULL = "python benchmarks/compare_optimizers.py --trials 30 --steps 1500 --steps-large 500 --seeds 5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default=OPTIMIZERS, help="comma-separated; adamw is the reference")
    parser.add_argument("--batch-sizes", default="16,64", help="small,large")
    parser.add_argument("--trials", type=int, default=4, help="tuning trials per optimizer and batch size")
    parser.add_argument("--steps", type=int, default=150, help="steps per run at the small batch size")
    parser.add_argument("--steps-large", type=int, default=60, help="steps per run at the large batch size")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of each tuned optimizer's final runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="comparison.md and plots")
    parser.add_argument("--studies", type=Path, default=ROOT / "runs" / "compare", help="hybrid tune folders")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to hybrid tune")
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    if "adamw" not in optimizers:
        parser.error("--optimizers must include adamw, the reference")
    small, large = (int(b) for b in args.batch_sizes.split(","))
    args.out.mkdir(parents=True, exist_ok=True)

    sections = []
    for batch, steps in ((small, args.steps), (large, args.steps_large)):
        study = args.studies / f"bs{batch}"
        command = [sys.executable, "-m", "hybrid.cli", "tune", "--optimizers", ",".join(optimizers),
                   "--trials", str(args.trials), "--steps", str(steps), "--seeds", str(args.seeds),
                   "--out", str(study), "--set", f"train.batch_size={batch}",
                   *(a for item in args.set for a in ("--set", item))]  # fmt: skip
        print("$", shlex.join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
        runs = {name: final_runs(study, name) for name in optimizers}
        png = args.out / f"comparison-bs{batch}.png"
        plot_curves(runs, batch, png)
        sections.append(table(runs, batch, steps, png.name))

    text = "\n".join([header(), *sections])
    (args.out / "comparison.md").write_text(text, encoding="utf-8")
    print(text)


def final_runs(study: Path, name: str) -> list[list[dict]]:
    """The metrics rows of each final seed of ``name``'s selected config, the candidate folder
    whose runs were trained with ``best-<name>.toml``'s [optim] (empty when no trial completed)."""
    path = study / f"best-{name}.toml"
    if not path.exists():
        return []
    best = load_config(path).optim
    for folder in sorted((study / "final" / name).glob("*")):
        configs = sorted(folder.glob("seed*/config.toml"))
        if configs and load_config(configs[0]).optim == best:
            return [read_table(path.parent / "metrics.csv") for path in configs]
    return []


def reach(rows: list[dict], target: float) -> tuple[float, float] | None:
    """(step, seconds) of the first evaluation at or below ``target``; None if never."""
    hit = next((r for r in rows if r["val_loss"] <= target), None)
    return (hit["step"], hit["seconds"]) if hit else None


def table(runs: dict[str, list[list[dict]]], batch: int, steps: int, png: str) -> str:
    from scipy.stats import ttest_ind

    reference = [rows[-1]["val_loss"] for rows in runs["adamw"]]
    target = statistics.fmean(reference) if reference else float("nan")
    lines = [
        f"## batch size {batch}, {steps} steps",
        "",
        f"Target: tuned AdamW's mean final val loss, {target:.4f}. Steps and seconds: mean [min, max] "
        "over the seeds that reach it; `never`: seeds that do not.",
        "",
        "| optimizer | final val loss | p (Welch vs adamw) | steps to target | seconds to target | never |",
        "|---|---|---|---|---|---|",
    ]
    for name, seeds in runs.items():
        finals = [rows[-1]["val_loss"] for rows in seeds]
        if not finals:
            lines.append(f"| {name} | no complete trial | | | | |")
            continue
        std = f" ± {statistics.stdev(finals):.4f}" if len(finals) > 1 else ""
        p = "" if name == "adamw" or len(finals) < 2 or len(reference) < 2 else \
            f"{ttest_ind(finals, reference, equal_var=False).pvalue:.3g}"  # fmt: skip
        hits = [h for h in (reach(rows, target) for rows in seeds) if h is not None]
        lines.append(f"| {name} | {statistics.fmean(finals):.4f}{std} | {p} | {_spread([h[0] for h in hits], '.0f')} "
                     f"| {_spread([h[1] for h in hits], '.1f')} | {len(seeds) - len(hits)}/{len(seeds)} |")  # fmt: skip
    return "\n".join([*lines, "", f"![loss curves]({png})", ""])


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return f"{statistics.fmean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def plot_curves(runs: dict[str, list[list[dict]]], batch: int, png: Path) -> None:
    """Val loss against step per optimizer: the seed mean, with a band from the min to the max seed."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (name, seeds) in enumerate(runs.items()):
        if not seeds:
            continue
        n = min(len(rows) for rows in seeds)
        steps = [r["step"] for r in seeds[0][:n]]
        losses = np.array([[r["val_loss"] for r in rows[:n]] for rows in seeds])  # (seeds, evaluations)
        ax.plot(steps, losses.mean(0), color=f"C{i}", label=name)
        ax.fill_between(steps, losses.min(0), losses.max(0), color=f"C{i}", alpha=0.2)
    ax.set(xlabel="step", ylabel="val loss (nats / char)", title=f"tuned optimizers, batch size {batch}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def header() -> str:
    import optuna
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = f"{names[0]} ({len(names)} logical cores, {os.cpu_count()} visible)" if names else cpu
    return "\n".join([
        "# Tuned optimizers compared",
        "",
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}; CPU: {cpu}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- full-size command: `{FULL}`",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
