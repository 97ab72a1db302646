"""QPU time per step and to a training loss: parameter shift against SPSA, with and without QNG,
on a noisy fake IBM device (FakeManilaV2, local testing mode, the hardware code path).

    python benchmarks/bench_spsa.py [--steps 30] [--out benchmarks/results]

1. Cost per step at the ``hybrid submit`` defaults (4 qubits, 1 layer, 12 angles, 32 circuit
   inputs, 1024 shots): the cost preview's table (``hybrid submit --dry-run``), no job sent.
2. Training: four runs of the same seed and model, smaller than the defaults so that they fit
   in ~10 minutes on 2 cores (8 circuit inputs per step: batch 2 x block 4), each through a
   journaled ``Runtime`` as ``hybrid submit`` runs them; the estimated QPU seconds of every
   training job (forward, gradient circuits and riding metric) are summed from the journal.
   Writes ``spsa.md`` and ``spsa.png``: training loss (fixed evaluation batch, on the device)
   against cumulative estimated QPU seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import tempfile
import time
from pathlib import Path

import qiskit
import qiskit_ibm_runtime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from hybrid.cli import main  # noqa: E402
from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.ibm import Journal, LocalService, Runtime  # noqa: E402
from hybrid.ibm.jobs import ExecutionOptions  # noqa: E402
from hybrid.ibm.shots import Gradient  # noqa: E402
from hybrid.train import train  # noqa: E402

RUNS = {  # name: (execution.gradient, optim.name, optim.qng.metric)
    "parameter shift, AdamW": ("parameter-shift", "adamw", "exact"),
    "SPSA, AdamW": ("spsa", "adamw", "exact"),
    "parameter shift, QNG (estimator metric)": ("parameter-shift", "qng", "exact"),
    "SPSA, QNG (QN-SPSA metric)": ("spsa", "qng", "qnspsa"),
}
SMALL = {
    "circuit.backend": "fake_manila", "circuit.name": "hardware_efficient", "circuit.n_qubits": 4,
    "circuit.n_layers": 1, "execution.shots": 1024, "model.block_size": 4, "train.batch_size": 2,
    "model.n_embd": 32, "model.n_head": 2, "model.n_layer": 1, "data.corpus_chars": 20_000,
    "train.eval_batches": 1, "train.sample_chars": 0, "train.seed": 0, "optim.qng.metric_samples": 8,
}  # fmt: skip


def preview() -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["submit", "--backend", "fake_manila", "--dry-run", "--quiet"])
    lines = printed.getvalue().splitlines()
    return "\n".join(lines[lines.index(next(line for line in lines if "per training step" in line)):])


def run(name: str, steps: int, every: int, folder: Path) -> dict:
    gradient, optimizer, metric = RUNS[name]
    cfg = apply_overrides(Config(), {**SMALL, "train.steps": steps, "train.eval_every": every,
                                     "execution.gradient": gradient, "optim.name": optimizer,
                                     "optim.qng.metric": metric})  # fmt: skip
    out = folder / name.split(",")[0].replace(" ", "_") / optimizer / metric
    out.mkdir(parents=True)
    journal = Journal(out / "jobs.sqlite")
    runtime = Runtime(ExecutionOptions.from_config(cfg.execution), journal, LocalService(out / "local_jobs"),
                      gradient=Gradient.from_config(cfg.execution))  # fmt: skip
    start = time.perf_counter()
    with runtime.active():
        train(cfg, out, progress=False, on_step=runtime.at_step)
    seconds = time.perf_counter() - start
    qpu = {}  # step -> estimated QPU seconds of its training (and metric) jobs
    for row in journal.rows():
        if row.purpose in ("train", "metric"):
            qpu[row.step] = qpu.get(row.step, 0.0) + (row.qpu_seconds or 0.0)
    import csv

    with open(out / "metrics.csv") as f:
        logged = [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f)]
    cumulative = [(step, sum(v for s, v in qpu.items() if s < step), loss) for step, loss in logged]
    per_step = sum(qpu.values()) / max(1, len(qpu))
    jobs = sorted({sum(1 for r in journal.rows() if r.purpose in ("train", "metric") and r.step == s) for s in qpu})
    return {"name": name, "curve": cumulative, "per_step": per_step, "wall": seconds, "jobs": jobs}


def to_reach(curve: list, target: float) -> float:
    """Cumulative QPU seconds at the first evaluation after step 0 whose loss is at or below ``target``."""
    return next((q for step, q, loss in curve if step > 0 and loss <= target), float("nan"))


def main_(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=2, help="evaluate every this many steps")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    table = preview()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in RUNS:
            results.append(run(name, args.steps, args.every, Path(tmp)))
            print(f"{name}: {results[-1]['wall']:.0f} s wall, {results[-1]['per_step']:.1f} QPU s per step",
                  flush=True)  # fmt: skip
    # the loss parameter shift with AdamW ends at, and what each run paid to get there
    target = max(r["curve"][-1][2] for r in results if r["name"].startswith("parameter shift"))
    lines = [
        "# SPSA gradients and the QN-SPSA metric: QPU time on a noisy fake device",
        "",
        f"Command: `python benchmarks/bench_spsa.py --steps {args.steps} --every {args.every}`; "
        f"{time.strftime('%Y-%m-%d')}; {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; Python {platform.python_version()}, torch {torch.__version__}, "
        f"qiskit {qiskit.__version__}, qiskit-ibm-runtime {qiskit_ibm_runtime.__version__}.",
        "",
        "## One training step at the `hybrid submit` defaults (32 circuit inputs, 1024 shots)",
        "",
        "From the cost preview (`hybrid submit --backend fake_manila --dry-run`): circuits and estimated",
        "QPU seconds of the one job per step (gates, readout, repetition delay of the device; QNG metric",
        "at 32 inputs):",
        "",
        "```",
        table,
        "```",
        "",
        f"## Training on FakeManilaV2 with its noise, {args.steps} steps",
        "",
        "Smaller than the defaults to fit the time: 8 circuit inputs per step (batch 2 x block 4),",
        "4 qubits, 1 layer, 12 angles, 1024 shots, QNG metric at 8 inputs; seed 0 for every run.",
        "Loss: the training loss (nats/char) on the fixed evaluation batch, evaluated on the device,",
        "every " + str(args.every) + " steps. QPU seconds: the journal's estimates of the training jobs only.",
        "",
        "| run | jobs per step | est. QPU s per step | final loss | QPU s to loss "
        f"{target:.4f} | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {'-'.join(map(str, r['jobs']))} | {r['per_step']:.1f} | "
                     f"{r['curve'][-1][2]:.4f} | {to_reach(r['curve'], target):.0f} | {r['wall']:.0f} |")  # fmt: skip
    lines += ["", "Loss at each evaluation (step: cumulative QPU s, loss):", ""]
    for r in results:
        points = ", ".join(f"{s}: {q:.0f} s {loss:.3f}" for s, q, loss in r["curve"])
        lines.append(f"- {r['name']}: {points}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spsa.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for r in results:
        ax.plot([q for _, q, _ in r["curve"]], [loss for _, _, loss in r["curve"]], marker="o", ms=3, label=r["name"])
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("cumulative estimated QPU seconds (training jobs)")
    ax.set_ylabel("training loss (nats/char)")
    ax.set_title(f"FakeManilaV2 with noise, 8 inputs/step, {args.steps} steps", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "spsa.png", dpi=120)


if __name__ == "__main__":
    main_()
