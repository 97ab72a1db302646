"""What does the quantum head cost in a full HybridGPT training step, against the classical model?

One ``hybrid.train.train_step`` (forward, loss, backward, clip, AdamW) of the default model
with ``quantum = "head"`` (StronglyEntangling, 2 layers, every Z string read out) and with
``quantum = "none"``, interleaved in one process; tokens/s and the ratio of step times.

    python benchmarks/bench_step.py --out benchmarks/results/step_cpu.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from timing import median_seconds  # noqa: E402

from hybrid import HybridGPT  # noqa: E402
from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.optim import build_optimizer  # noqa: E402
from hybrid.train import train_step  # noqa: E402


def step_seconds(quantum: str, qubits: int, batch_size: int, dtype: torch.dtype, repeats: int, device: str):
    cfg = apply_overrides(
        Config(),
        {
            "model.quantum": quantum,
            "circuit.n_qubits": qubits,
            "train.batch_size": batch_size,
            "optim.name": "adamw",
        },  # the simulator's cost, not the optimizer's: see bench_kfac.py
    )
    torch.manual_seed(0)
    model = HybridGPT(cfg.model, 64, cfg.circuit).to(device=device, dtype=dtype)
    optimizer = build_optimizer(model, cfg.optim)
    x = torch.randint(0, 64, (batch_size, cfg.model.block_size), device=device)
    y = torch.randint(0, 64, (batch_size, cfg.model.block_size), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        train_step(model, optimizer, (x, y), cfg.optim.grad_clip)
        sync()

    return median_seconds(step, repeats), batch_size * cfg.model.block_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32, 256], help="sequences of 32 tokens")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="about this many timed steps per row")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for batch_size in args.batch_size:
        classical, tokens = step_seconds("none", 4, batch_size, dtype, args.repeats, args.device)
        for qubits in args.qubits:
            quantum, _ = step_seconds("head", qubits, batch_size, dtype, args.repeats, args.device)
            row = [qubits, tokens, f"{classical:.4f}", f"{tokens / classical:.0f}", f"{quantum:.4f}",
                   f"{tokens / quantum:.0f}", f"{quantum / classical:.2f}"]  # fmt: skip
            rows.append(row)
            print(" | ".join(map(str, row)), flush=True)
    header = ["qubits", "tokens/step", "none (s)", "none tok/s", "head (s)", "head tok/s", "head / none"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    text = "\n".join(
        [
            "# HybridGPT training step: quantum head vs classical",
            "",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- machine: {device}, torch {torch.__version__} ({args.threads} threads), {args.dtype}",
            "- model: default config (2 blocks, n_embd 64, block 32, vocabulary 64); head = StronglyEntangling,"
            " 2 layers, measure='all'; step = forward, loss, backward, clip, AdamW",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows),
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
