"""Learning-rate transfer across widths: does the best rate move with n_embd, under each parametrization?

    python benchmarks/lr_transfer.py --steps 500

For adamw, muon, eigen_adam and kfac (each row's muP rule: ``hybrid.optim.registry.mup_width``),
trains the default model at widths 32, 64, 128 and 256 over a log-spaced grid of the
row's learning rate (AdamW's ``optim.lr``, Muon's ``optim.muon.lr``, eigen-Adam's
``optim.eigen_adam.lr``, K-FAC's ``optim.kfac.lr``), under
``model.parametrization = standard`` and ``mup`` (base width 64, so both share the width-64
column), and writes ``benchmarks/results/lr_transfer.md`` (final val loss per rate and width, the
best rate per width and how many grid steps it moves) and ``lr_transfer.png`` (loss against rate
per width, the two parametrizations side by side). Every finished run's loss is kept in
``lr_transfer.json`` beside the table (committed with it), so a rerun continues where it stopped
and runs only what is missing: delete a cell's key there to measure it again.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from footer import footer  # noqa: E402

from hybrid.checkpoint import atomic_write  # noqa: E402
from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.tables import read_table  # noqa: E402
from hybrid.train import CHECKPOINT, METRICS, Diverged, train  # noqa: E402

WIDTHS = (32, 64, 128, 256)
GRIDS = {  # optimizer -> (the key swept, rates): factors of 2 around the shipped default
    "adamw": ("optim.lr", [3e-3 * 2.0**k for k in range(-3, 4)]),
    "muon": ("optim.muon.lr", [0.0142 * 2.0**k for k in range(-3, 4)]),
    "eigen_adam": ("optim.eigen_adam.lr", [3e-3 * 2.0**k for k in range(-3, 4)]),
    "kfac": ("optim.kfac.lr", [1.0 * 2.0**k for k in range(-4, 3)]),
}
PARAMETRIZATIONS = ("standard", "mup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "lr_transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lr_transfer.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = args.out.with_suffix(".json")
    done = json.loads(store.read_text()) if store.exists() else {}  # "name/parametrization/width/index" -> loss
    losses: dict[tuple, float] = {}
    for width in WIDTHS:  # widths outermost: a partial run has every rate of the small widths
        for name, (key, rates) in GRIDS.items():
            for parametrization in PARAMETRIZATIONS:
                for i, rate in enumerate(rates):
                    cell = f"{name}/{parametrization}/{width}/{i}"
                    if cell not in done:
                        done[cell] = run(args, name, key, rate, parametrization, width, i)
                        atomic_write(store, lambda f: f.write(json.dumps(done, indent=0, sort_keys=True).encode()))
                    losses[name, parametrization, width, i] = done[cell]
    text = report(losses, args)
    args.out.write_text(text)
    plot(losses).savefig(args.out.with_suffix(".png"), dpi=120)
    print(text)


def run(args, name: str, key: str, rate: float, parametrization: str, width: int, index: int) -> float:
    cfg = apply_overrides(Config(), {"optim.name": name, key: rate, "model.n_embd": width,
                                     "model.parametrization": parametrization, "model.base_width": 64,
                                     "train.steps": args.steps, "train.sample_chars": 0})  # fmt: skip
    out = args.runs / name / parametrization / f"w{width}" / f"lr{index}"
    rows = read_table(out / METRICS)
    if not (rows and rows[-1]["step"] == args.steps):
        print(f"{name} {parametrization} width {width} {key}={rate:.3g}", flush=True)
        try:
            train(cfg, out, resume=(out / CHECKPOINT).exists(), progress=False)
        except Diverged:
            return math.inf
        rows = read_table(out / METRICS)
    value = rows[-1]["val_loss"]
    return value if math.isfinite(value) else math.inf


def best_index(losses: dict, name: str, parametrization: str, width: int) -> int:
    rates = GRIDS[name][1]
    return min(range(len(rates)), key=lambda i: losses[name, parametrization, width, i])


def report(losses: dict, args) -> str:
    lines = ["# Learning-rate transfer across widths", "",
             f"The default model (2 blocks, quantum head), widths {', '.join(map(str, WIDTHS))}, {args.steps} steps, "
             "seed 0, final val loss (nats/char). Rates are factors of 2 around the shipped default; mup has "
             "base_width 64, so it equals standard at width 64. Shift: how many grid steps the best rate moves "
             "from the smallest to the largest width (muP's claim: at most one).", "",
             footer(("torch",)), ""]  # fmt: skip
    lines += ["| optimizer | parametrization | best rate per width | shift (grid steps) | transfers |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, (key, rates) in GRIDS.items():
        for parametrization in PARAMETRIZATIONS:
            best = [best_index(losses, name, parametrization, w) for w in WIDTHS]
            shift = max(best) - min(best)
            per_width = ", ".join(f"{w}: {rates[b]:.3g}" for w, b in zip(WIDTHS, best, strict=True))
            lines.append(f"| {name} ({key}) | {parametrization} | {per_width} | {shift} | "
                         f"{'yes' if shift <= 1 else 'no'} |")  # fmt: skip
    for name, (key, rates) in GRIDS.items():
        lines += ["", f"## {name}: final val loss by {key} and width", "",
                  "| parametrization | width | " + " | ".join(f"{r:.3g}" for r in rates) + " |",
                  "|---|---|" + "---|" * len(rates)]  # fmt: skip
        for parametrization in PARAMETRIZATIONS:
            for w in WIDTHS:
                cells = [losses[name, parametrization, w, i] for i in range(len(rates))]
                lines.append(f"| {parametrization} | {w} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join([*lines, "", "![loss against rate](lr_transfer.png)", ""])


def plot(losses: dict) -> Figure:
    fig = Figure(figsize=(10, 3.5 * len(GRIDS)))
    axes = fig.subplots(len(GRIDS), len(PARAMETRIZATIONS), squeeze=False)
    for row, (name, (key, rates)) in enumerate(GRIDS.items()):
        for col, parametrization in enumerate(PARAMETRIZATIONS):
            ax = axes[row][col]
            for w in WIDTHS:
                values = [losses[name, parametrization, w, i] for i in range(len(rates))]
                ax.plot(rates, [v if math.isfinite(v) else float("nan") for v in values], marker="o", label=f"{w}")
            ax.set(xscale="log", xlabel=key, ylabel="final val loss", title=f"{name}, {parametrization}")
            ax.grid(alpha=0.3)
            ax.legend(title="n_embd")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
