"""Learning-rate transfer across widths: does the best rate move with n_embd, under each parametrization?

    python benchmarks/lr_transfer.py --steps 500
    python benchmarks/lr_transfer.py --steps 500 --data shakespeare --optimizers adamw,muon,eigen_adam
                                                   # real text: lr_transfer-shakespeare.md
    python benchmarks/lr_transfer.py ... --parametrizations mup &       # two workers on 2 cores,
    python benchmarks/lr_transfer.py ... --parametrizations standard    # one store, disjoint cells

For adamw, muon, eigen_adam and kfac (each row's muP rule: ``hybrid.optim.registry.mup_width``),
trains the default model at widths 32, 64, 128 and 256 over a log-spaced grid of the
row's learning rate (AdamW's ``optim.lr``, Muon's ``optim.muon.lr``, eigen-Adam's
``optim.eigen_adam.lr``, K-FAC's ``optim.kfac.lr``), under
``model.parametrization = standard`` and ``mup`` (``--base-width``, 64 by default: the width the
shipped defaults were tuned at, so both share the width-64 column), and writes
``benchmarks/results/lr_transfer.md`` (final val loss per rate and width, the best rate per
width and how many grid steps it moves) and ``lr_transfer.png`` (loss against rate per width,
the two parametrizations side by side). Every finished run's loss is kept in
``lr_transfer.json`` beside the table (committed with it), so a rerun continues where it stopped
and runs only what is missing: delete a cell's key there to measure it again. Workers started with
disjoint ``--parametrizations``, ``--widths`` or ``--optimizers`` share that store (each write
merges under a lock); the last to finish writes the table of every row the store has.
"""

from __future__ import annotations

import argparse
import fcntl
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
from hybrid.config import Config, apply_overrides, validate  # noqa: E402
from hybrid.errors import InputError  # noqa: E402
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
    parser.add_argument("--data", default="markov", help="data.path: markov (the default model's) or a corpus")
    parser.add_argument("--runs", type=Path, help="default runs/lr_transfer[/<data>]")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/lr_transfer[-<data>].md")
    parser.add_argument("--seeds", type=int, default=1, help="seeds (train.seed 0, 1, ...) of the --rows; "
                        "a row's loss is the mean over the seeds it has for every cell")  # fmt: skip
    parser.add_argument("--optimizers", default=",".join(GRIDS), help="comma-separated, among "
                        f"{', '.join(GRIDS)} (default: all): the rows swept and reported")  # fmt: skip
    parser.add_argument("--parametrizations", default=",".join(PARAMETRIZATIONS), help="comma-separated, "
                        "the parametrizations this worker runs (default: both); the table reports every row "
                        "the store has")  # fmt: skip
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated, the widths "
                        "this worker runs (default: all)")  # fmt: skip
    parser.add_argument("--base-width", type=int, default=64, help="mup's model.base_width (default 64, the "
                        "default model's width); another needs its own --out")  # fmt: skip
    parser.add_argument("--rows", default="", help="comma-separated optimizer/parametrization rows that get "
                        "--seeds, e.g. muon/mup (default: all); the others keep the seeds they have")  # fmt: skip
    args = parser.parse_args()
    names = args.optimizers.split(",")
    rows = [f"{n}/{p}" for n in names for p in PARAMETRIZATIONS]
    chosen = args.rows.split(",") if args.rows else rows
    ours, widths = args.parametrizations.split(","), args.widths.split(",")
    if (args.seeds < 1 or not set(names) <= set(GRIDS) or not set(chosen) <= set(rows)
            or not set(ours) <= set(PARAMETRIZATIONS) or not set(widths) <= set(map(str, WIDTHS))):  # fmt: skip
        parser.exit(2, f"error: --seeds must be >= 1, --optimizers among {', '.join(GRIDS)}, --rows among "
                       f"{', '.join(rows)}, --parametrizations among {', '.join(PARAMETRIZATIONS)} and --widths "
                       f"among {', '.join(map(str, WIDTHS))}; got {args.seeds}, {args.optimizers}, {args.rows}, "
                       f"{args.parametrizations}, {args.widths}\n")  # fmt: skip
    try:
        validate(apply_overrides(Config(), {"data.path": args.data}))  # a bad --data ends here, before any run
    except InputError as error:
        parser.exit(2, f"error: {error}\n")
    markov = args.data == "markov"  # the default model's cells keep their place
    args.runs = args.runs or ROOT / "runs" / "lr_transfer" / ("" if markov else args.data)
    args.out = args.out or ROOT / "benchmarks" / "results" / f"lr_transfer{'' if markov else '-' + args.data}.md"
    torch.set_num_threads(1)
    store = args.out.with_suffix(".json")
    done = record(store, {})  # cell_key(...) -> loss; "base_width" -> mup's base width
    base = done.get("base_width", 64 if done else args.base_width)  # a store without it predates the option
    if base != args.base_width:
        parser.exit(2, f"error: {store} holds mup runs of base width {base}; rerun with --base-width {base} "
                       "or give another --out\n")  # fmt: skip
    if args.base_width != 64:
        done = record(store, {"base_width": args.base_width})
    for seed in range(args.seeds):  # seeds outermost: a partial run has whole seeds of the small widths
        for width in map(int, widths):  # then widths: a partial seed has every rate of the small widths
            for name in names:
                key, rates = GRIDS[name]
                for parametrization in ours:
                    if seed > 0 and f"{name}/{parametrization}" not in chosen:
                        continue
                    for i, rate in enumerate(rates):
                        cell = cell_key(name, parametrization, width, i, seed)
                        if cell not in done:
                            loss = run(args, name, key, rate, parametrization, width, i, seed)
                            done = record(store, {cell: loss})
    losses, seeds, errors = seed_means(record(store, {}), names)
    text = report(losses, seeds, errors, args, names)
    args.out.write_text(text)
    plot(losses, names).savefig(args.out.with_suffix(".png"), dpi=120)
    print(text)


def record(store: Path, cells: dict[str, float]) -> dict[str, float]:
    """Adds ``cells`` to the json store and returns all it holds, other workers' cells included:
    read, merged and written under an exclusive lock beside it, so workers never drop each
    other's runs."""
    with open(store.with_name(f".{store.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = json.loads(store.read_text()) if store.exists() else {}
        if cells:
            done.update(cells)
            atomic_write(store, lambda f: f.write(json.dumps(done, indent=0, sort_keys=True).encode()))
    return done


def cell_key(name: str, parametrization: str, width: int, index: int, seed: int) -> str:
    """A cell's key in the json store: ``name/parametrization/width/index`` (seed 0, as first
    stored), ``.../index/seed<k>`` for seed k > 0."""
    return f"{name}/{parametrization}/{width}/{index}" + (f"/seed{seed}" if seed else "")


def seed_means(done: dict[str, float], names: list[str]) -> tuple[dict[tuple, float], dict[tuple, int], dict]:
    """Per cell of the optimizers ``names``, the mean loss over the seeds 0..k-1 its row
    (optimizer, parametrization) has for every cell (a diverged run counts as infinite), that
    k per row, and the mean's standard error per cell (nan under 2 seeds, inf with a diverged seed)."""
    losses, seeds, errors = {}, {}, {}
    for name in names:
        rates = GRIDS[name][1]
        for parametrization in PARAMETRIZATIONS:
            cells = [(w, i) for w in WIDTHS for i in range(len(rates))]
            k = 0
            while all(cell_key(name, parametrization, w, i, k) in done for w, i in cells):
                k += 1
            seeds[name, parametrization] = k
            for w, i in cells:
                values = [done[cell_key(name, parametrization, w, i, s)] for s in range(k)]
                mean = sum(values) / k if k else math.nan
                losses[name, parametrization, w, i] = mean
                spread = sum((v - mean) ** 2 for v in values) / (k - 1) if k > 1 else math.nan
                errors[name, parametrization, w, i] = math.sqrt(spread / k) if math.isfinite(mean) else math.inf
    return losses, seeds, errors


def run(args, name: str, key: str, rate: float, parametrization: str, width: int, index: int, seed: int) -> float:
    cfg = apply_overrides(Config(), {"optim.name": name, key: rate, "model.n_embd": width,
                                     "model.parametrization": parametrization, "model.base_width": args.base_width,
                                     "train.steps": args.steps, "train.sample_chars": 0,
                                     "data.path": args.data, "train.seed": seed})  # fmt: skip
    label = parametrization if parametrization == "standard" or args.base_width == 64 else f"mup-base{args.base_width}"
    out = args.runs / name / label / f"w{width}" / (f"lr{index}" + (f"-seed{seed}" if seed else ""))
    rows = read_table(out / METRICS)
    if not (rows and rows[-1]["step"] == args.steps):
        print(f"{name} {parametrization} width {width} {key}={rate:.3g} seed {seed}", flush=True)
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


def ties(losses: dict, errors: dict, name: str, parametrization: str, width: int) -> list[int]:
    """The grid indices at ``width`` whose mean loss is within one standard error of the best's
    (the two errors combined): the rates the seeds cannot tell from the best; the best alone
    under 2 seeds."""
    row = [(losses[name, parametrization, width, i], errors[name, parametrization, width, i])
           for i in range(len(GRIDS[name][1]))]  # fmt: skip
    low, low_error = row[best_index(losses, name, parametrization, width)]
    return [i for i, (mean, error) in enumerate(row) if mean == low or mean - low <= math.hypot(low_error, error)]


def least_shift(sets: list[list[int]]) -> int:
    """The fewest grid steps a rate must move across widths when each width may take any index
    of its set: the narrowest window holding one index of every set."""
    top = max(map(max, sets))
    return min(s for s in range(top + 1) if any(all(any(a <= i <= a + s for i in set_) for set_ in sets)
                                                for a in range(top + 1)))  # fmt: skip


def report(losses: dict, seeds: dict, errors: dict, args, names: list[str]) -> str:
    lines = ["# Learning-rate transfer across widths", "",
             f"The default model (2 blocks, quantum head) on `{args.data}`, "
             f"widths {', '.join(map(str, WIDTHS))}, {args.steps} steps, "
             "final val loss (nats/char), the mean over each row's seeds (train.seed 0, 1, ...). "
             f"Rates are factors of 2 around the shipped default; mup has base_width {args.base_width}, so it "
             f"equals standard at width {args.base_width}. Shift: how many grid steps the best rate moves from "
             "the smallest to the largest width (muP's claim: at most one). Within noise (rows of 2 "
             "seeds or more): each width's rates whose mean is within one standard error of its best's "
             "(the errors combined; lowest-highest), and the fewest steps a rate must move when each width "
             "may take any of those.", "",
             footer(("torch",)), ""]  # fmt: skip
    lines += ["| optimizer | parametrization | seeds | best rate per width | shift (grid steps) | transfers "
              "| within noise | shift within noise |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in names:
        key, rates = GRIDS[name]
        for parametrization in PARAMETRIZATIONS:
            if not seeds[name, parametrization]:  # a row no worker has finished a seed of
                continue
            best = [best_index(losses, name, parametrization, w) for w in WIDTHS]
            shift = max(best) - min(best)
            per_width = ", ".join(f"{w}: {rates[b]:.3g}" for w, b in zip(WIDTHS, best, strict=True))
            noise, within = "-", "-"
            if seeds[name, parametrization] > 1:
                sets = [ties(losses, errors, name, parametrization, w) for w in WIDTHS]
                noise = ", ".join(f"{w}: {rates[min(t)]:.3g}" + (f"-{rates[max(t)]:.3g}" if len(t) > 1 else "")
                                  for w, t in zip(WIDTHS, sets, strict=True))  # fmt: skip
                within = str(least_shift(sets))
            lines.append(f"| {name} ({key}) | {parametrization} | {seeds[name, parametrization]} | {per_width} "
                         f"| {shift} | {'yes' if shift <= 1 else 'no'} | {noise} | {within} |")  # fmt: skip
    for name in names:
        key, rates = GRIDS[name]
        lines += ["", f"## {name}: final val loss by {key} and width", "",
                  "| parametrization | width | " + " | ".join(f"{r:.3g}" for r in rates) + " |",
                  "|---|---|" + "---|" * len(rates)]  # fmt: skip
        for parametrization in (p for p in PARAMETRIZATIONS if seeds[name, p]):
            for w in WIDTHS:
                cells = [losses[name, parametrization, w, i] for i in range(len(rates))]
                lines.append(f"| {parametrization} | {w} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join([*lines, "", f"![loss against rate]({args.out.with_suffix('.png').name})", ""])


def plot(losses: dict, names: list[str]) -> Figure:
    fig = Figure(figsize=(10, 3.5 * len(names)))
    axes = fig.subplots(len(names), len(PARAMETRIZATIONS), squeeze=False)
    for row, name in enumerate(names):
        key, rates = GRIDS[name]
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
