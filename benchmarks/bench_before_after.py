"""Did a change slow the layer or the training step? This checkout against an earlier one, interleaved.

Each case is timed in a fresh subprocess per checkout, the two checkouts alternating for
``--rounds`` rounds, so drift on a shared machine hits both alike; the table prints the median
over rounds of each and their ratio (after / before; within about 1.1x is noise on 2 shared
cores). Cases:

- layer: one ``QuantumLayer`` forward+backward (StronglyEntangling, 2 layers, <Z_i>, float64,
  batch 8192), the median of ``timing.median_seconds``;
- step: ``hybrid.train.train_step`` of the default model (quantum head, 4 qubits, batch 32,
  float32) under an optimizer preset, the mean over ``--steps`` steps after 3 warm-up steps
  (so curvature refreshes are paid at their real rate).

    git worktree add /tmp/before <commit>
    python benchmarks/bench_before_after.py --before /tmp/before --out benchmarks/results/before_after.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from footer import footer  # noqa: E402

HERE = Path(__file__).resolve().parents[1]

LAYER = """
import json, sys, torch
sys.path[:0] = [{root!r}, {root!r} + '/benchmarks']
torch.set_num_threads(1)
import circuits
from hybrid import QuantumLayer
from timing import median_seconds
torch.manual_seed(0)
layer = QuantumLayer(circuits.StronglyEntangling({qubits}, 2)).double()
x = torch.randn(8192, {qubits}, dtype=torch.float64, requires_grad=True)
def step():
    layer(x).sum().backward()
print(json.dumps(median_seconds(step, 3)))
"""

STEP = """
import json, sys, time, torch
sys.path[:0] = [{root!r}]
torch.set_num_threads(1)
from hybrid import HybridGPT
from hybrid.config import Config, apply_overrides
from hybrid.optim import build_optimizer
from hybrid.train import train_step
cfg = apply_overrides(Config(), {{"optim.name": {optimizer!r}, "train.batch_size": 32}})
torch.manual_seed(0)
model = HybridGPT(cfg.model, 64, cfg.circuit)
optimizer = build_optimizer(model, cfg.optim)
x = torch.randint(0, 64, (32, cfg.model.block_size))
y = torch.randint(0, 64, (32, cfg.model.block_size))
for _ in range(3):
    train_step(model, optimizer, (x, y), cfg.optim.grad_clip)
start = time.perf_counter()
for _ in range({steps}):
    train_step(model, optimizer, (x, y), cfg.optim.grad_clip)
print(json.dumps((time.perf_counter() - start) / {steps}))
"""


def seconds(root: Path, script: str, **fields) -> float:
    """Seconds reported by one case's snippet run against the checkout at ``root``."""
    code = script.format(root=str(root), **fields)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--qubits", type=int, nargs="*", default=[4, 6, 8])
    parser.add_argument("--optimizers", nargs="*", default=["adamw", "muon", "hybrid", "eigen_adam"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per step case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as every case's subprocess (the footer reports it)
    if not (args.before / "hybrid" / "__init__.py").is_file():
        parser.error(f"--before {args.before} is not a checkout of this project; make one with git worktree add")
    cases = [(f"layer, {q} qubits", LAYER, {"qubits": q}) for q in args.qubits]
    cases += [(f"step, {o}", STEP, {"optimizer": o, "steps": args.steps}) for o in args.optimizers]
    rows = []
    for name, script, fields in cases:
        before, after = [], []
        for _ in range(args.rounds):
            before.append(seconds(args.before, script, **fields))
            after.append(seconds(HERE, script, **fields))
        b, a = statistics.median(before), statistics.median(after)
        rows.append(f"| {name} | {b:.4f} | {a:.4f} | {a / b:.2f} |")
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    text = "\n".join(
        [
            f"# Layer and step time: this checkout against {commit}",
            "",
            "| case | before (s) | after (s) | after / before |",
            "|---|---|---|---|",
            *rows,
            "",
            footer(("torch", "pennylane")),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
