"""``hybrid curvature RUN``: the curvature report of a run folder, ``curvature.md`` and ``curvature.png``.

    curvature_report(run)                                # reads RUN, writes RUN/curvature.md and .png
    x, y = tracked_batch(run, cfg, tokens)               # the tokens the report uses
    geometry = circuit_geometry(model, (x, y), damping)  # {circuit: CircuitGeometry}: three metrics, steps

What it shows:
- along training (``diagnostics.csv``, written with ``train.curvature_every``): per block the
  damped condition proxy lambda_1 / (lambda_k + damping), the trace, the effective rank and the
  cosine between the raw gradient and the applied step, beside the train-validation gap;
- at the last checkpoint, for every circuit, three metrics of its weights on the same tokens
  (``hybrid.optim.circuit_fisher``): the QFI (4x the Fubini-Study metric), the classical Fisher of
  the computational-basis measurement, and the pullback metric J^T F J the loss sees; their
  spectra side by side, and the angles between the steps each induces on the same gradient,
  ``d_M = (M + damping I)^-1 g`` (QNG's damping, the same for all three).

The tokens are the first ``tokens`` positions of the batch tracking used (the run's first fixed
evaluation batch of the train split), so the metrics and the tracked spectra see the same text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure

from hybrid.checkpoint import atomic_write
from hybrid.data import load_dataset
from hybrid.diagnostics import TABLE, TOP_K, Spectrum, metric_spectrum
from hybrid.errors import InputError, check_number
from hybrid.models import lm_logits, next_token_loss
from hybrid.optim.circuit_fisher import classical_fisher, pullback_metric, quantum_fisher
from hybrid.quantum import QuantumLayer
from hybrid.tables import read_table
from hybrid.train import CHECKPOINT, CONFIG, METRICS, TOKENIZER, load_run

REPORT, FIGURE = "curvature.md", "curvature.png"
METRICS_OF_A_CIRCUIT = ("QFI", "classical Fisher", "pullback")
TRACKED = {  # column -> (axis title, log scale)
    "damped_condition": (r"damped condition proxy $\lambda_1 / (\lambda_k + \delta)$", True),
    "trace": ("trace", True),
    "effective_rank": ("effective rank / block size", False),
    "step_cosine": ("cos(raw gradient, applied step)", False),
}


@dataclass
class CircuitGeometry:
    """Three metrics of one circuit's weights on the same tokens, and the steps they induce."""

    metrics: dict[str, torch.Tensor]  # name -> (P, P) float64, names METRICS_OF_A_CIRCUIT
    gradient: torch.Tensor  # (P,) dL/dw of the mean next-token loss on those tokens
    damping: float  # added to every metric before the solve
    steps: dict[str, torch.Tensor] = field(default_factory=dict)  # "gradient" and each metric -> (P,)

    def angles(self) -> dict[tuple[str, str], float]:
        """Degrees between every pair of steps (0: the same direction, 90: orthogonal)."""
        names = list(self.steps)
        return {(a, b): _angle(self.steps[a], self.steps[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


def circuit_geometry(model: torch.nn.Module, batch, damping: float) -> dict[str, CircuitGeometry]:
    """``{circuit name: CircuitGeometry}`` of every ``QuantumLayer`` of ``model`` on ``batch = (x, y)``.

    .. math:: d_M = (M + \\delta I)^{-1} g, \\quad M \\in \\{F^Q, F^C, J^\\top F J\\}

    QFI and classical Fisher are averaged over the circuit inputs ``x`` produces (one per token),
    the pullback over the same tokens, so all three are averages over the same positions; ``g``
    is the gradient of the mean next-token loss (a training-mode pass). The model is left as it was (mode,
    ``.grad``, ``last_inputs``).

    Args:
        model: a ``HybridGPT`` with circuits on an exact backend.
        batch: ``(x, y)`` token ids (B, T) and their next tokens.
        damping: delta, e.g. ``cfg.optim.qng.damping``.

    Raises:
        InputError: the model has no circuit, or one runs on a sampling backend.
    """
    x, y = batch
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantumLayer)}
    if not layers:
        raise InputError("the model has no circuit, so no circuit metrics; train with --quantum head, ffn or attn")
    training, kept = model.training, {name: layer.last_inputs for name, layer in layers.items()}
    try:
        model.train()  # as a training step: QuantumLayer keeps the inputs of a training-mode pass
        loss = next_token_loss(lm_logits(model, x), y)
        inputs = {name: layer.last_inputs for name, layer in layers.items()}  # (B*T, n_inputs) each
        grads = torch.autograd.grad(loss, [layer.weights for layer in layers.values()])  # .grad untouched
    finally:
        model.train(training)
        for name, layer in layers.items():
            layer.last_inputs = kept[name]
    geometry = {}
    for (name, layer), grad in zip(layers.items(), grads, strict=True):
        metrics = {
            "QFI": quantum_fisher(layer, inputs[name]),
            "classical Fisher": classical_fisher(layer, inputs[name]),
            "pullback": pullback_metric(model, layer, x),
        }
        metrics = {k: m.detach().double().cpu() for k, m in metrics.items()}  # (P, P) each
        g = grad.detach().reshape(-1).double().cpu()  # (P,)
        eye = torch.eye(g.numel(), dtype=torch.float64)
        steps = {"gradient": g, **{k: torch.linalg.solve(m + damping * eye, g) for k, m in metrics.items()}}
        geometry[name] = CircuitGeometry(metrics, g, damping, steps)
    return geometry


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    norm = float(a.norm() * b.norm())
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b) / norm)))) if norm > 0 else math.nan


# --- the report ------------------------------------------------------------------------------


def check_run(run: Path) -> list[dict]:
    """The tracked rows of run folder ``run``, or an ``InputError`` naming what is missing and the fix."""
    if not (run / CONFIG).is_file():
        raise InputError(f"{run} is not a run folder (it has no {CONFIG}); pass a folder written by hybrid train")
    if not (run / CHECKPOINT).is_file():
        raise InputError(f"{run} has no {CHECKPOINT}; let hybrid train reach its first evaluation, or --resume it")
    rows = read_table(run / TABLE)
    if not rows:
        raise InputError(f"{run} has no tracked rows ({TABLE}); train a run with tracking on, "
                         "e.g. hybrid train --set train.curvature_every=100")  # fmt: skip
    return rows


def curvature_report(run: str | Path, tokens: int = 32) -> Path:
    """Write ``run/curvature.md`` and ``run/curvature.png`` (atomically); return the report's path.

    Args:
        run: a run folder of ``hybrid train`` with ``train.curvature_every`` set.
        tokens: positions the circuit metrics are averaged over (whole sequences of the tracked
            batch, at least one).

    Raises:
        InputError: not a run folder, no checkpoint, no tracked rows, or ``tokens`` below 1.
    """
    run = Path(run)
    check_number("--tokens", tokens, low=1, integer=True)
    rows = check_run(run)
    model, _, cfg = load_run(run)
    model.double()  # the metrics in float64, as their oracles
    x, y = tracked_batch(run, cfg, tokens)
    has_circuit = any(isinstance(m, QuantumLayer) for m in model.modules())
    geometry = circuit_geometry(model, (x, y), cfg.optim.qng.damping) if has_circuit else {}
    step = int(read_table(run / METRICS)[-1]["step"]) if (run / METRICS).is_file() else int(rows[-1]["step"])
    kinds = {name: "quantum" for name in geometry} | {"adamw": "adamw"}
    fig = plot_report(rows, geometry, kinds, step)
    atomic_write(run / FIGURE, lambda file: fig.savefig(file, format="png", dpi=110))
    text = report_text(run, cfg, rows, geometry, kinds, step, x.numel())
    atomic_write(run / REPORT, lambda file: file.write(text.encode("utf-8")))
    return run / REPORT


def tracked_batch(run: str | Path, cfg, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max(1, tokens // block_size)`` sequences of the batch ``hybrid.train`` tracks
    (its first fixed evaluation batch of the train split): x, y (b, T) token ids."""
    dataset = load_dataset(cfg.data, cfg.model.block_size, Path(run) / TOKENIZER)
    eval_rng = torch.Generator().manual_seed(cfg.train.seed + 1)  # as hybrid.train draws its evaluation batches
    x, y = dataset.batch("train", cfg.train.batch_size, cfg.model.block_size, eval_rng)  # (B, T) each
    b = max(1, tokens // cfg.model.block_size)  # whole sequences
    return x[:b], y[:b]  # (b, T) each


def _blocks(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k.rpartition("/")[0] for k in rows[-1] if k.endswith("/damped_condition")))


def _style(kind: str, index: int, count: int) -> dict:
    if kind == "quantum":
        return {"color": mpl.colormaps["autumn"](0.6 * index / max(1, count - 1)), "lw": 2.2, "marker": "o", "ms": 3}
    if kind == "adamw":
        return {"color": "0.35", "lw": 1.4, "ls": "--"}
    return {"color": mpl.colormaps["Blues"](0.35 + 0.55 * index / max(1, count - 1)), "lw": 1.0}


def plot_report(rows: list[dict], geometry: dict[str, CircuitGeometry], kinds: dict[str, str], step: int) -> Figure:
    """Top: the tracked scalars of every block against step, and the train-validation gap.
    Bottom: the three circuit metrics' spectra, the angles between their steps, and the
    eigenvalues of QFI - classical Fisher (Braunstein-Caves: all >= 0)."""
    fig = Figure(figsize=(22, 8.5), layout="constrained")
    axes = fig.subplots(2, 4)
    steps = np.array([r["step"] for r in rows])
    blocks = _blocks(rows)
    counts = {kind: sum(kinds.get(b, "classical") == kind for b in blocks) for kind in ("classical", "quantum")}
    seen = {"classical": 0, "quantum": 0, "adamw": 0}
    for name in blocks:
        kind = kinds.get(name, "classical")
        style = _style(kind, seen[kind], counts.get(kind, 1))
        seen[kind] += 1
        for ax, column in zip([*axes[0, :3], axes[1, 0]], TRACKED, strict=True):
            values = np.array([r.get(f"{name}/{column}", math.nan) for r in rows], dtype=float)
            if column == "effective_rank":
                values = values / np.array([r.get(f"{name}/size", math.nan) for r in rows], dtype=float)
            ax.plot(steps, values, label=f"{name} ({kind})", **style)
    for ax, (title, log) in zip([*axes[0, :3], axes[1, 0]], TRACKED.values(), strict=True):
        ax.set(title=title, xlabel="step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3, lw=0.5)
    fig.legend(handles=axes[0, 0].lines, fontsize=7, loc="outside right upper", title="blocks")

    gap_ax = axes[0, 3]
    gap_ax.plot(steps, [r["gap"] for r in rows], color="black", marker="o", ms=3, label="gap = val - train")
    gap_ax.set(title="train-validation gap at the tracked steps", xlabel="step", ylabel="gap (nats / token)")
    losses = gap_ax.twinx()
    losses.plot(steps, [r["train_loss"] for r in rows], color="tab:blue", lw=1, alpha=0.6, label="train loss")
    losses.plot(steps, [r["val_loss"] for r in rows], color="tab:orange", lw=1, alpha=0.6, label="val loss")
    losses.set_ylabel("loss")
    gap_ax.legend(handles=gap_ax.lines + losses.lines, fontsize=7)
    gap_ax.grid(alpha=0.3, lw=0.5)

    spectra_ax, angle_ax, bc_ax = axes[1, 1:]
    markers = dict(zip(METRICS_OF_A_CIRCUIT, ("o", "s", "^"), strict=True))
    width = 0.8 / max(1, len(geometry))
    for i, (name, geo) in enumerate(geometry.items()):
        for metric, matrix in geo.metrics.items():
            lam = metric_spectrum(matrix).numpy()  # (P,) descending
            keep = lam > 1e-12 * max(lam[0], 1e-300)
            spectra_ax.plot(np.arange(1, lam.size + 1)[keep], lam[keep], marker=markers[metric], ms=3, lw=1,
                            label=f"{metric} ({name})")  # fmt: skip
        angles = geo.angles()
        labels = [f"{a} vs {b}" for a, b in angles]
        spectra_ax.axhline(geo.damping, color="gray", ls=":", lw=1)
        angle_ax.barh(np.arange(len(angles)) + i * width, list(angles.values()), height=width, label=name)
        angle_ax.set_yticks(np.arange(len(angles)) + width * (len(geometry) - 1) / 2, labels, fontsize=7)
        bc = torch.linalg.eigvalsh(geo.metrics["QFI"] - geo.metrics["classical Fisher"]).numpy()
        bc_ax.plot(np.arange(1, bc.size + 1), np.sort(bc)[::-1], marker="o", ms=3, label=name)
    if not geometry:
        for ax in (spectra_ax, angle_ax, bc_ax):
            ax.text(0.5, 0.5, "no circuit in this model", ha="center", va="center", transform=ax.transAxes)
    spectra_ax.set(title=f"circuit metrics at step {step} (dotted: damping)", xlabel="eigenvalue index",
                   ylabel="eigenvalue", yscale="log")  # fmt: skip
    angle_ax.set(title="angle between the induced steps (damped solve of one gradient)", xlabel="degrees")
    angle_ax.set_xlim(0, 90)
    bc_ax.axhline(0.0, color="gray", lw=0.8)
    bc_ax.set(title="eigenvalues of QFI - classical Fisher (>= 0)", xlabel="index", yscale="symlog")
    for ax in (spectra_ax, angle_ax, bc_ax):
        ax.grid(alpha=0.3, lw=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def _number(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def report_text(run: Path, cfg, rows: list[dict], geometry: dict[str, CircuitGeometry], kinds: dict[str, str],
                step: int, n_tokens: int) -> str:  # fmt: skip
    """The markdown of ``curvature.md``."""
    blocks, last = _blocks(rows), rows[-1]
    named = [n for n in blocks if kinds.get(n)]  # circuits and adamw: the per-step table's columns
    k = int(last.get(f"{blocks[0]}/k", TOP_K)) if blocks else TOP_K
    lines = [
        f"# Curvature report: {run.name}",
        "",
        f"Model: n_layer={cfg.model.n_layer}, n_embd={cfg.model.n_embd}, quantum={cfg.model.quantum}, "
        f"circuit {cfg.circuit.name} ({cfg.circuit.n_qubits} qubits, {cfg.circuit.n_layers} layers); "
        f"optimizer {cfg.optim.name}; {len(rows)} tracked steps ({int(rows[0]['step'])}..{int(last['step'])}); "
        f"checkpoint at step {step}.",
        "",
        f"![curvature]({FIGURE})",
        "",
        "## Along training",
        "",
        f"Damped condition proxy: lambda_1 / (lambda_k + damping), k = {k} (fewer for smaller blocks), with the",
        "damping each block's preconditioner adds (K-FAC's, QNG's; AdamW's eps^2 for its second moment). No",
        "undamped condition number is reported: for these rank-deficient blocks it is float noise.",
        "",
        "| step | train loss | val loss | gap | " + " | ".join(f"{n} cond. / cos" for n in named) + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(named),
    ]
    picks = sorted({round(i) for i in np.linspace(0, len(rows) - 1, min(len(rows), 20))})
    for r in (rows[i] for i in picks):
        cells = [f"{_number(r.get(f'{n}/damped_condition'))} / {_number(r.get(f'{n}/step_cosine'))}" for n in named]
        lines.append(f"| {int(r['step'])} | {_number(r['train_loss'])} | {_number(r['val_loss'])} | "
                     f"{_number(r['gap'])} | " + " | ".join(cells) + " |")  # fmt: skip
    lines += [
        "",
        f"Every block at the last tracked step ({int(last['step'])}):",
        "",
        "| block | kind | size | trace | "
        + " | ".join(f"top {i + 1}" for i in range(k))
        + " | damping | damped cond. | eff. rank | eff. dim | step cosine |",
        "|---|---|---:|---:|" + "---:|" * (k + 5),
    ]
    for n in blocks:
        tops = " | ".join(_number(last.get(f"{n}/top_{i + 1}", math.nan)) for i in range(k))
        stats = " | ".join(
            _number(last.get(f"{n}/{s}", math.nan))
            for s in ("damping", "damped_condition", "effective_rank", "effective_dim", "step_cosine")
        )
        lines.append(f"| {n} | {kinds.get(n, 'classical')} | {int(last[f'{n}/size'])} | "
                     f"{_number(last[f'{n}/trace'])} | {tops} | {stats} |")  # fmt: skip
    if not geometry:
        return "\n".join([*lines, "", "The model has no circuit: no circuit metrics.", ""])
    lines += ["", f"## Three metrics of each circuit at step {step}", "",
              f"On the circuit inputs of {n_tokens} tokens of the tracked batch (float64, the ideal state). The steps",
              "solve (M + damping I) d = g for the same gradient g of the loss in the circuit weights, damping = "
              f"{cfg.optim.qng.damping:g} (optim.qng.damping).", ""]  # fmt: skip
    for name, geo in geometry.items():
        lines += [f"### {name}", "", "| metric | trace | " + " | ".join(f"top {i + 1}" for i in range(k))
                  + " | damped cond. | eff. rank |", "|---|---:|" + "---:|" * (k + 2)]  # fmt: skip
        for metric, matrix in geo.metrics.items():
            s = Spectrum(name, "quantum", metric_spectrum(matrix)).summary(geo.damping, k)
            tops = " | ".join(_number(s.get(f"top_{i + 1}", math.nan)) for i in range(k))
            lines.append(f"| {metric} | {_number(s['trace'])} | {tops} | {_number(s['damped_condition'])} | "
                         f"{_number(s['effective_rank'])} |")  # fmt: skip
        bc = float(torch.linalg.eigvalsh(geo.metrics["QFI"] - geo.metrics["classical Fisher"]).min())
        lines += ["", f"Braunstein-Caves: the smallest eigenvalue of QFI - classical Fisher is {bc:.3g} (>= 0).", "",
                  "| steps | angle (degrees) |", "|---|---:|"]  # fmt: skip
        lines += [f"| {a} vs {b} | {angle:.1f} |" for (a, b), angle in geo.angles().items()]
        lines.append("")
    return "\n".join(lines)
