"""Curvature along training: one row per tracked step in ``diagnostics.csv``, its spectra beside it.

    track(model, batch, run_dir, step, optimizer, splits=eval_sets)   # append a row + spectra/step_<step>.pt
    load_spectra(run_dir)                                            # {step: [Spectrum]}
    reset_tracking(run_dir, keep_through)                            # a resumed run replays later steps

A row holds, per block (every K-FAC layer, every circuit, AdamW's second moment as a reference):
``Spectrum.summary`` (trace, top-k eigenvalues, the damped condition proxy lambda_1 / (lambda_k +
damping) with the damping the row used, effective rank, ...) and ``step_cosine``, the cosine
between the raw gradient and the step the optimizer applies (``step_cosines``); and once per row
``train_loss``, ``val_loss`` and ``gap = val_loss - train_loss`` at that step (mean loss over
``splits``, eval mode, as ``hybrid.train.evaluate``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from hybrid.checkpoint import atomic_write
from hybrid.diagnostics.slices import step_cosines
from hybrid.diagnostics.spectra import (
    TOP_K,
    LossFn,
    Spectrum,
    batch_loss,
    curvature_spectra,
    outer_spectrum,
    summarize,
    untouched,
)
from hybrid.optim.optimizer import HybridOptimizer
from hybrid.quantum import QuantumLayer
from hybrid.tables import append_row, read_table, write_table

TABLE, SPECTRA = "diagnostics.csv", "spectra"  # in a run folder: one row per tracked step, one file per step


def track(
    model: nn.Module, batch, run_dir: str | Path, step: int, optimizer=None, *,
    damping: float | dict[str, float] = 1e-3, loss_fn: LossFn | None = None, metric_samples: int = 64,
    top_k: int = TOP_K, splits: dict[str, list] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Append one row (see the module docstring) to ``run_dir/diagnostics.csv`` and save the
    spectra to ``run_dir/spectra/step_<step>.pt`` (atomically, plain tensors).

    ``spectra = curvature_spectra(model, batch, optimizer, ...)``; a fixed ``batch`` makes the
    steps comparable. ``hybrid.train`` calls this every ``train.curvature_every`` steps, with its
    fixed evaluation batches as ``splits``. Nothing of the model or the optimizer changes.

    Args:
        damping: one number or ``{"classical": ..., "quantum": ...}`` (K-FAC's and QNG's); the
            adamw block keeps AdamW's ``eps ** 2`` unless given as ``damping["adamw"]``.
        top_k: top eigenvalues per block; also the k of the damped condition proxy.
        splits: ``{"train": [batch, ...], "val": [batch, ...]}`` for the losses and their gap;
            None: NaN.

    Returns:
        the row written.
    """
    run_dir = Path(run_dir)
    spectra = curvature_spectra(model, batch, optimizer, loss_fn=loss_fn, metric_samples=metric_samples)
    per_kind = damping if isinstance(damping, dict) else {"classical": damping, "quantum": damping}
    cosines = {}
    if isinstance(optimizer, HybridOptimizer):
        cosines = step_cosines(model, batch, optimizer, block_parameters(model, spectra, optimizer), loss_fn=loss_fn)
    losses = {split: split_loss(model, splits[split], loss_fn) if splits else math.nan for split in ("train", "val")}
    save_spectra(run_dir, step, spectra)  # before the row, so that every row has its spectra
    row = {"step": step, "train_loss": losses["train"], "val_loss": losses["val"],
           "gap": losses["val"] - losses["train"], **summarize(spectra, per_kind, top_k),
           **{f"{name}/step_cosine": value for name, value in cosines.items()}}  # fmt: skip
    append_row(run_dir / TABLE, row)
    return row


def block_parameters(model: nn.Module, spectra: list[Spectrum], optimizer: HybridOptimizer) -> dict[str, list]:
    """``{block name: its parameters}``: a K-FAC layer's weight and bias, a circuit's weights,
    every parameter AdamW trains for the adamw block."""
    blocks = {}
    for s in spectra:
        if s.kind == "adamw":
            blocks[s.name] = [p for group in optimizer.adamw.param_groups for p in group["params"]]
        else:
            module = model.get_submodule(s.name)
            members = [module.weights] if isinstance(module, QuantumLayer) else list(module.parameters())
            blocks[s.name] = [p for p in members if p.requires_grad]
    return blocks


@torch.no_grad()
def split_loss(model: nn.Module, batches: list, loss_fn: LossFn | None = None) -> float:
    """Mean loss over ``batches`` in eval mode (no dropout), as ``hybrid.train.evaluate``; nothing changes."""
    with untouched(model, []):
        model.eval()
        return sum(float(batch_loss(model, b, loss_fn)) for b in batches) / len(batches)


def reset_tracking(run_dir: str | Path, keep_through: int | None = None) -> None:
    """Drop the tracking of ``run_dir`` after step ``keep_through`` (a resumed run replays those
    steps), or all of it (None: a new run)."""
    run_dir = Path(run_dir)
    rows = [r for r in read_table(run_dir / TABLE) if keep_through is not None and r["step"] <= keep_through]
    if rows:
        write_table(run_dir / TABLE, rows)
    else:
        (run_dir / TABLE).unlink(missing_ok=True)
    for step, path in _spectra_files(run_dir).items():
        if keep_through is None or step > keep_through:
            path.unlink()


def save_spectra(run_dir: str | Path, step: int, spectra: list[Spectrum]) -> Path:
    """Write ``spectra`` to ``run_dir/spectra/step_<step>.pt``: ``{"step", "blocks": [{"name",
    "kind", "eigenvalues"}]}``, a classical block as the eigenvalues of its two factors
    (``"factors": [a, g]``, a + g numbers instead of a * g)."""
    folder = Path(run_dir) / SPECTRA
    folder.mkdir(parents=True, exist_ok=True)
    blocks = [
        {"name": s.name, "kind": s.kind, "factors": [t.cpu() for t in s.factors]}
        if s.factors is not None
        else {"name": s.name, "kind": s.kind, "eigenvalues": s.eigenvalues.cpu()}
        for s in spectra
    ]
    for block, s in zip(blocks, spectra, strict=True):
        if s.damping is not None:
            block["damping"] = float(s.damping)
    path = folder / f"step_{step:07d}.pt"
    atomic_write(path, lambda file: torch.save({"step": int(step), "blocks": blocks}, file))
    return path


def load_spectra(run_dir: str | Path) -> dict[int, list[Spectrum]]:
    """``{step: [Spectrum]}`` of every step ``track`` saved in ``run_dir``, in step order."""
    spectra = {}
    for step, path in sorted(_spectra_files(run_dir).items()):
        blocks = torch.load(path, map_location="cpu", weights_only=True)["blocks"]
        spectra[step] = [
            Spectrum(b["name"], b["kind"], outer_spectrum(*b["factors"]), tuple(b["factors"]))
            if "factors" in b
            else Spectrum(b["name"], b["kind"], b["eigenvalues"], damping=b.get("damping"))
            for b in blocks
        ]
    return spectra


def _spectra_files(run_dir: str | Path) -> dict[int, Path]:
    folder = Path(run_dir) / SPECTRA
    files = folder.glob("step_*.pt") if folder.is_dir() else []
    return {int(m.group(1)): p for p in files if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))}
