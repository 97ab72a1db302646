"""The default model and its classical baseline on real text, in bits per character.

    python benchmarks/real_text.py --seeds 3

Trains the default `hybrid train` model (quantum LM head, default optimizer, 1500 steps at
batch 32) and the same model with a linear head (`--quantum none`) on `shakespeare` (characters
and a 1,024-token BPE) and `pydoc` (characters), for ``--seeds`` seeds each, and writes
``benchmarks/results/real_text.md``: test bits per character (mean, standard deviation, min, max
over seeds), the validation text's unigram and bigram entropies for scale, steps, wall time and
the number of parameters. Finished runs are skipped, so a rerun continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from footer import footer  # noqa: E402

from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.tables import read_table  # noqa: E402
from hybrid.train import CHECKPOINT, METRICS, TEST, train  # noqa: E402

WORKLOADS = {  # name -> config overrides
    "shakespeare, char": {"data.path": "shakespeare"},
    "shakespeare, BPE-1024": {"data.path": "shakespeare", "data.tokenizer": "bpe", "data.vocab_size": 1024},
    "pydoc, char": {"data.path": "pydoc"},
}
MODELS = {"quantum head (default)": {}, "linear head (--quantum none)": {"model.quantum": "none"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=Config().train.steps)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "real_text", help="run folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real_text.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for seed in range(args.seeds):  # seeds outermost: a partial run has every cell
        for workload, data in WORKLOADS.items():
            for model, quantum in MODELS.items():
                cfg = apply_overrides(Config(), {**data, **quantum, "train.seed": seed, "train.steps": args.steps,
                                                 "train.sample_chars": 0})  # fmt: skip
                out = args.runs / _slug(workload) / _slug(model) / f"seed{seed}"
                if not (out / TEST).exists() or read_table(out / METRICS)[-1]["step"] != args.steps:
                    print(f"{workload} / {model} / seed {seed}", flush=True)
                    train(cfg, out, resume=(out / CHECKPOINT).exists(), progress=False)
                summary = json.loads((out / TEST).read_text())
                summary["seconds"] = read_table(out / METRICS)[-1]["seconds"]
                summary["params"] = _params(out)
                results.setdefault((workload, model), []).append(summary)
    args.out.write_text(report(results, args))
    print(f"wrote {args.out}")


def report(results: dict, args) -> str:
    lines = [
        "# The default model on real text",
        "",
        f"Budget per run: the default model and optimizer (`Config()`), {args.steps} steps at batch 32 of 32-token",
        f"windows, {args.seeds} seeds (0..{args.seeds - 1}); nothing tuned for these corpora. Test bpc is the",
        "held-out test split (plays and topics never seen in training or validation) evaluated once at the end",
        "over all its consecutive 32-token windows, in bits per character whatever the tokenizer. For scale: the",
        "validation text's unigram and bigram character entropies (a model below the bigram entropy uses more",
        "than one character of context).",
        "",
        "| data | model | params | test bpc, mean ± sd | min .. max | val unigram / bigram | steps | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (workload, model), runs in results.items():
        bpc = [r["test_bpc"] for r in runs]
        sd = statistics.stdev(bpc) if len(bpc) > 1 else float("nan")
        seconds = statistics.mean(r["seconds"] for r in runs)
        lines.append(
            f"| {workload} | {model} | {runs[0]['params']:,} | {statistics.mean(bpc):.3f} ± {sd:.3f} | "
            f"{min(bpc):.3f} .. {max(bpc):.3f} | {runs[0]['val_unigram_bpc']:.2f} / {runs[0]['val_bigram_bpc']:.2f} "
            f"| {args.steps} | {seconds:.0f} |"
        )
    return "\n".join([*lines, "", footer(("torch", "tokenizers", "pennylane")), ""])


def _params(run: Path) -> int:
    state = torch.load(run / CHECKPOINT, weights_only=True)
    return sum(t.numel() for t in state["model"].values())


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.split(" (")[0]).strip("-")


if __name__ == "__main__":
    main()
