"""What does quantum natural gradient cost? A QNG step against an AdamW step, and our exact metric
against PennyLane's, on the default `hybrid train` model, side by side in one process.

    python benchmarks/bench_qng.py                       # prints a markdown table
    python benchmarks/bench_qng.py --write benchmarks/results/qng.md

Steps: the default model (4 qubits, strongly_entangling, 2 layers, measure "all" as the LM
head), batch 32 x block 32 = 1024 circuit inputs per step; the QNG rows refresh the metric
on every step (curvature_every=1, metric refresh included) unless the row says otherwise; the
pullback row is QNG in the loss's metric (``optim.qng.metric="pullback"``: ceil(64 / 32) = 2
sequences' tokens through one forward-mode Jacobian of the whole model) against the
Fubini-Study rows above it.
Metric: the same circuit, weights and inputs through ``hybrid.metric_tensor`` (exact) and
through PennyLane: ``qml.metric_tensor`` on default.qubit and lightning.qubit, and
``qml.adjoint_metric_tensor`` (full only; it fails on AngleEmbedding, so it gets the same
circuit with explicit RX gates). Times are medians.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pennylane as qml
import torch
from timing import median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import circuits  # noqa: E402
import hybrid  # noqa: E402
from hybrid.checkpoint import atomic_write  # noqa: E402
from hybrid.config import Config, apply_overrides  # noqa: E402
from hybrid.data import load_dataset  # noqa: E402
from hybrid.models import HybridGPT  # noqa: E402
from hybrid.optim import build_optimizer  # noqa: E402
from hybrid.train import train_step  # noqa: E402


def step_time(cfg: Config, repeats: int) -> float:
    """Median seconds of one ``train_step`` (forward, backward, clip, optimizer step)."""
    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data, cfg.model.block_size)
    model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit)
    optimizer = build_optimizer(model, cfg.optim)
    generator = torch.Generator().manual_seed(0)
    batches = [dataset.batch("train", cfg.train.batch_size, cfg.model.block_size, generator) for _ in range(8)]
    cycle = itertools.cycle(batches)
    return median_seconds(lambda: train_step(model, optimizer, next(cycle), cfg.optim.grad_clip), repeats)


def explicit_rx(circuit):
    """The template with RX gates in place of AngleEmbedding, for qml.adjoint_metric_tensor."""

    def fn(inputs, weights):
        for wire in circuit.wires:
            qml.RX(inputs[wire], wires=wire)
        qml.StronglyEntanglingLayers(weights, wires=circuit.wires)
        return [qml.expval(o) for o in circuit.observables]

    return fn


def pennylane_seconds(circuit, inputs, weights, approx) -> dict[str, float | str]:
    """Median seconds per input of PennyLane's metric tensors on the autograd interface."""
    from pennylane import numpy as pnp

    w = pnp.array(weights, requires_grad=True)
    out: dict[str, float | str] = {}

    def per_input(metric_fn) -> float:
        rows = itertools.cycle(inputs.tolist())
        return median_seconds(lambda: metric_fn(pnp.array(next(rows), requires_grad=False), w), len(inputs))

    for device in ("default.qubit", "lightning.qubit"):
        qnode = qml.QNode(circuit, qml.device(device, wires=circuit.n_qubits + 1), interface="autograd")
        out[f"qml.metric_tensor, {device}"] = per_input(qml.metric_tensor(qnode, approx=approx))
    if approx is None:
        qnode = qml.QNode(explicit_rx(circuit), qml.device("default.qubit", wires=circuit.n_qubits))
        out["qml.adjoint_metric_tensor, default.qubit (RX gates)"] = per_input(qml.adjoint_metric_tensor(qnode))
    return out


def environment(load: float) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        model_name = [line for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = model_name[0].split(":", 1)[1].strip() if model_name else cpu
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"{platform.system()} {platform.release()}, load average {load:.1f} at the start",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, pennylane {qml.__version__}, "
        f"pennylane-lightning {version('pennylane_lightning')}",
        f"- command: `{' '.join(['python', *sys.argv])}` at commit {commit or '?'}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="about this many timed training steps per row")
    parser.add_argument("--metric-inputs", type=int, default=4, help="inputs for the PennyLane comparison")
    parser.add_argument("--write", type=Path, help="also write the markdown here (atomically)")
    args = parser.parse_args()
    load = os.getloadavg()[0]  # other processes on the machine, before this one adds to it

    base = Config()
    rows = [("AdamW on every parameter", apply_overrides(base, {"optim.name": "adamw"}), None)]
    for approx in ("block-diag", "full"):
        overrides = {"optim.name": "qng", "optim.qng.approx": approx, "optim.qng.curvature_every": 1}
        rows.append((f"QNG {approx}, metric every step", apply_overrides(base, overrides), approx))
    overrides = {"optim.name": "qng", "optim.qng.metric": "pullback", "optim.qng.curvature_every": 1}
    rows.append(("QNG pullback (full), metric every step", apply_overrides(base, overrides), None))
    default_every = base.optim.qng.curvature_every
    if default_every > 1:
        overrides = {"optim.name": "qng", "optim.qng.approx": "block-diag"}
        rows.append((f"QNG block-diag, metric every {default_every} steps", apply_overrides(base, overrides), None))

    print(f"timing {len(rows)} optimizers, {args.repeats} steps each ...", file=sys.stderr)
    seconds = [step_time(cfg, args.repeats) for _, cfg, _ in rows]
    table = [
        f"### One training step, default model ({base.train.batch_size} x {base.model.block_size} = "
        f"{base.train.batch_size * base.model.block_size} circuit inputs, "
        f"{base.optim.qng.metric_samples} metric samples)",
        "",
        "| optimizer | ms / step | vs AdamW |",
        "|---|---:|---:|",
    ]
    for (name, _, _), s in zip(rows, seconds, strict=True):
        table.append(f"| {name} | {1e3 * s:.1f} | {s / seconds[0]:.2f}x |")

    # The metric: same circuit, weights, inputs.
    c = base.circuit
    torch.manual_seed(0)
    layer = hybrid.QuantumLayer(circuits.make_circuit(c.name, c.n_qubits, c.n_layers, c.measure)).double()
    inputs = torch.rand(args.metric_inputs, layer.n_inputs, dtype=torch.float64) * 2 * np.pi
    weights = layer.weights.detach().numpy()
    big = torch.rand(base.optim.qng.metric_samples, layer.n_inputs, dtype=torch.float64) * 2 * np.pi
    table += [
        "",
        f"### The metric of the default circuit ({c.name}, {c.n_qubits} qubits, {c.n_layers} layers, "
        f"{layer.weights.numel()} weights), seconds per input",
        "",
        "| approx | ours (exact, statevector) | peer | peer s / input | peer / ours |",
        "|---|---:|---|---:|---:|",
    ]
    for approx in ("block-diag", None):
        print(f"timing metrics, approx={approx} ...", file=sys.stderr)
        ours = median_seconds(lambda a=approx: hybrid.metric_tensor(layer, inputs, a), repeats=5) / len(inputs)
        ours_batch = median_seconds(lambda a=approx: hybrid.metric_tensor(layer, big, a), repeats=5) / len(big)
        label = approx or "full"
        for peer, peer_s in pennylane_seconds(layer.circuit, inputs, weights, approx).items():
            table.append(
                f"| {label} | {ours:.2e} ({ours_batch:.2e} at {len(big)} inputs) | {peer} | {peer_s:.2e} | "
                f"{peer_s / ours:.0f}x |"
            )
    text = "\n".join(["## QNG benchmark", "", *environment(load), "", *table, ""])
    print(text)
    if args.write:
        atomic_write(args.write, lambda file: file.write(text.encode()))


if __name__ == "__main__":
    main()
