"""Adam in K-FAC's eigenbasis (ours) against the method it borrows from, SOAP, on the default model.

    bash benchmarks/peers/setup.sh     # the peers env has pytorch-optimizer (SOAP); never a project dependency
    benchmarks/peers/.venv/bin/python benchmarks/bench_soap.py --steps 1500 --seeds 3 --out benchmarks/results/soap.md

Every optimizer trains its own copy of the default `hybrid train` model (quantum head) from the
same initialization on the same batches, seed by seed, with the same warmup-cosine schedule
and gradient clipping as `hybrid train`; the optimizers take turns within each seed, so load
from other processes spreads over all of them. Rows:

- adamw: torch AdamW on everything (the `hybrid train --optimizer adamw` optimizer).
- soap (pytorch-optimizer): SOAP (Vyas et al. 2024) on the 2-D matrices inside the blocks, AdamW
  on the rest (embeddings, norms, biases, LM head, circuit weights).
- eigen_adam: ours, Adam in the eigenbasis of K-FAC's Kronecker factors on the blocks' linear
  layers (`optim.eigen_adam.exclude=lm_head`, the same parameters SOAP gets), AdamW on the rest.
- eigen_adam, head too: ours on every linear layer K-FAC takes (`--optimizer eigen_adam`).

Prints a markdown table (final validation loss per seed, mean and spread; step time over
AdamW's) and, with ``--out``, writes it with the machine, versions, command and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
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
from hybrid.optim import build_optimizer, lr_factor, parameter_groups  # noqa: E402
from hybrid.optim.registry import muon_params  # noqa: E402
from hybrid.train import evaluate, train_step  # noqa: E402


class Partitioned(torch.optim.Optimizer):
    """SOAP on some parameters, AdamW on the rest, stepped together (for the peer row only)."""

    def __init__(self, soap: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.inner = [soap, adamw]
        super().__init__([p for o in self.inner for g in o.param_groups for p in g["params"]], {"lr": 0.0})
        self.param_groups = [g for o in self.inner for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.inner:
            o.step()


def soap_optimizer(model, cfg: Config):
    from pytorch_optimizer import SOAP

    owned = muon_params(model)  # the blocks' 2-D matrices, as Muon's row takes them
    rest = parameter_groups(model, exclude={id(p) for p in owned})
    soap = SOAP(owned, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                weight_decay=cfg.optim.weight_decay, precondition_frequency=10)  # fmt: skip
    adamw = torch.optim.AdamW(
        [{"params": [p for _, p in rest["decay"]], "weight_decay": cfg.optim.weight_decay},
         {"params": [p for _, p in rest["no_decay"]], "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
    )  # fmt: skip
    return Partitioned(soap, adamw)


ROWS = {
    "adamw": lambda model, cfg: build_optimizer(model, apply_overrides(cfg, {"optim.name": "adamw"}).optim),
    "soap (pytorch-optimizer), blocks": soap_optimizer,
    "eigen_adam (ours), blocks": lambda model, cfg: build_optimizer(
        model, apply_overrides(cfg, {"optim.name": "eigen_adam", "optim.eigen_adam.exclude": "lm_head"}).optim),
    "eigen_adam (ours), blocks + head": lambda model, cfg: build_optimizer(
        model, apply_overrides(cfg, {"optim.name": "eigen_adam"}).optim),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = apply_overrides(Config(), {"train.steps": args.steps})
    finals: dict[str, list[float]] = {name: [] for name in ROWS}
    seconds: dict[str, float] = dict.fromkeys(ROWS, 0.0)
    bar = tqdm(total=args.seeds * len(ROWS) * args.steps, desc="bench", unit="step")
    for seed in range(args.seeds):
        cfg = apply_overrides(base, {"train.seed": seed})
        dataset = load_dataset(cfg.data, cfg.model.block_size)
        eval_rng = torch.Generator().manual_seed(seed + 1)
        val = [dataset.batch("val", cfg.train.batch_size, cfg.model.block_size, eval_rng)
               for _ in range(cfg.train.eval_batches)]  # fmt: skip
        for name, make in ROWS.items():
            torch.manual_seed(seed)
            model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit, cfg.execution)
            optimizer = make(model, cfg)
            peaks = [g["lr"] for g in optimizer.param_groups]
            batches = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            for step in range(args.steps):
                for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                    group["lr"] = peak * lr_factor(step, cfg.optim, args.steps)
                batch = dataset.batch("train", cfg.train.batch_size, cfg.model.block_size, batches)
                train_step(model, optimizer, batch, cfg.optim.grad_clip)
                bar.update(1)
            seconds[name] += time.perf_counter() - start
            finals[name].append(evaluate(model, val))
    bar.close()
    lines = [
        f"# Adam in K-FAC's eigenbasis against SOAP on the default model ({args.steps} steps, {args.seeds} seeds)",
        "",
        "Default `hybrid train` model (quantum head, 4 qubits, batch 32 x 32 tokens), same initialization and "
        "batches per seed, warmup + cosine schedule at AdamW's lr 3e-3 for every row, gradient clip 1.0.",
        "",
        "| optimizer | final val loss, mean ± std [per seed] | step time over adamw |",
        "|---|---|---:|",
    ]
    for name, losses in finals.items():
        spread = statistics.stdev(losses) if len(losses) > 1 else math.nan
        per_seed = ", ".join(f"{x:.3f}" for x in losses)
        ratio = seconds[name] / seconds["adamw"]
        lines.append(f"| {name} | {statistics.mean(losses):.3f} ± {spread:.3f} [{per_seed}] | {ratio:.2f}x |")
    from importlib.metadata import version

    lines += [
        "",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} torch threads",
        f"- versions: torch {torch.__version__}, pytorch-optimizer {version('pytorch-optimizer')}, "
        f"Python {platform.python_version()}",
        f"- command: `python benchmarks/bench_soap.py {' '.join(sys.argv[1:])}`",
        f"- date: {dt.date.today()}",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
