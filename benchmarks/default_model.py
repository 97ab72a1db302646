"""Which tuned optimizer wins on the default model (the one `hybrid train` trains)?

    python benchmarks/default_model.py --study runs/compare/bs16 --optimizers adamw,muon,eigen_adam,hybrid

Takes each optimizer's tuned ``[optim]`` section from a ``hybrid tune`` study (its
``best-<name>.toml``), trains the default model (``Config()``: quantum head, batch 32, 1500
steps) with it for ``--seeds`` seeds, and writes ``benchmarks/results/default_model.md`` and a
loss-curve plot with seed bands: final val loss, Welch's t-test against tuned AdamW, and the
steps and seconds each needs to reach tuned AdamW's mean final loss. Finished seeds are
skipped, so a rerun continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_optimizers import FULL, header, plot_curves, table  # noqa: E402

from hybrid.config import Config, apply_overrides, load_config  # noqa: E402
from hybrid.tables import read_table  # noqa: E402
from hybrid.train import CHECKPOINT, METRICS, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True, help="a hybrid tune folder with best-<name>.toml")
    parser.add_argument("--optimizers", default="adamw,muon,eigen_adam,hybrid", help="adamw is the reference")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=Config().train.steps)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "default_model", help="run folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.optimizers.split(",")
    runs = {}
    for seed in range(args.seeds):  # seeds outermost: a partial run has every optimizer
        for name in names:
            tuned = load_config(args.study / f"best-{name}.toml").optim
            cfg = apply_overrides(dataclasses.replace(Config(), optim=tuned),
                                  {"train.seed": seed, "train.steps": args.steps, "train.sample_chars": 0})  # fmt: skip
            out = args.runs / name / f"seed{seed}"
            done = (out / METRICS).exists() and read_table(out / METRICS)[-1]["step"] == args.steps
            if not done:
                print(f"{name} seed {seed}", flush=True)
                train(cfg, out, resume=(out / CHECKPOINT).exists(), progress=False)
    for name in names:
        runs[name] = [read_table(args.runs / name / f"seed{s}" / METRICS) for s in range(args.seeds)]
    png = args.out / "default_model.png"
    plot_curves(runs, Config().train.batch_size, png)
    intro = (f"# Tuned optimizers on the default model\n\nEach optimizer's `[optim]` from `{args.study}` "
             f"(tuned at its batch size), then the default `hybrid train` model and data, {args.steps} steps, "
             f"{args.seeds} seeds, one torch thread.\n")  # fmt: skip
    about = header().replace("# Tuned optimizers compared\n", "").replace(f"- full-size command: `{FULL}`\n", "")
    text = "\n".join([intro, about, table(runs, Config().train.batch_size, args.steps, png.name)])
    (args.out / "default_model.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
