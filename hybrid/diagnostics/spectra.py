"""Curvature diagnostics: the spectra of the quantum metric and of the K-FAC blocks, side by side.

    spectra = curvature_spectra(model, batch, optimizer)   # [Spectrum], one per block
    summarize(spectra, damping)                            # {name/stat: value}: condition, eff. dim, ...
    track(model, batch, run_dir, step, optimizer)          # append to run_dir/diagnostics.csv + spectra/
    slices = loss_slices(model, batch, optimizer)          # loss along -gradient and -natural gradient
    plot_spectra(spectra), plot_tracking(run_dir), plot_slices(slices)   # in hybrid.diagnostics.plots

Conventions (the numbers a plot shows):
- quantum blocks: eigenvalues of the Fubini-Study metric of each ``QuantumLayer``'s weights,
  PennyLane's convention (``hybrid.metric_tensor``, full metric, averaged over the circuit
  inputs of the batch); the quantum Fisher information is 4x this.
- classical blocks: eigenvalues of each K-FAC block ``A (x) G`` in ``hybrid.optim.kfac``'s
  normalization. The spectrum of a Kronecker product is every product of an eigenvalue of A
  with one of G, so no (d_in d_out)^2 matrix is ever formed.
- condition number: largest eigenvalue over the smallest one above ``RTOL`` times the largest
  (the numerically nonzero part); ``rank`` counts those eigenvalues.
- effective dimension: sum_i lambda_i / (lambda_i + damping), the number of directions the
  curvature resolves above the damping (MacKay 1992); participation ratio:
  (sum_i lambda_i)^2 / sum_i lambda_i^2.

Every function here leaves the model, its gradients and the optimizer as it found them
(parameters, ``.grad``, train/eval mode, the global RNG, ``QuantumLayer.last_inputs`` and the
state of every preconditioner passed in), so diagnostics never change a training trajectory.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hybrid.checkpoint import atomic_write
from hybrid.errors import InputError
from hybrid.models import lm_logits, next_token_loss
from hybrid.optim.kfac import KFACPreconditioner
from hybrid.optim.metric import metric_tensor
from hybrid.optim.optimizer import HybridOptimizer
from hybrid.optim.qng import QNGPreconditioner
from hybrid.quantum import QuantumLayer
from hybrid.tables import append_row, read_table, write_table

RTOL = 1e-10  # eigenvalues below RTOL * largest count as zero
TABLE, SPECTRA = "diagnostics.csv", "spectra"  # in a run folder: one row per tracked step, one file per step

LossFn = Callable[[nn.Module, tuple], torch.Tensor]  # (model, batch) -> scalar loss


@dataclass
class Spectrum:
    """The eigenvalues of one curvature block, descending, float64."""

    name: str  # module name in the model
    kind: str  # "quantum" (Fubini-Study metric) or "classical" (K-FAC block)
    eigenvalues: torch.Tensor  # (P,)
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # classical: eigenvalues of A (a,) and G (g,)

    def summary(self, damping: float) -> dict[str, float]:
        """Size, largest eigenvalue, rank, condition number, effective dimension, participation ratio."""
        lam = self.eigenvalues.clamp_min(0)
        top = float(lam[0]) if lam.numel() else 0.0
        nonzero = lam[lam > RTOL * top] if top > 0 else lam[:0]
        return {
            "size": float(lam.numel()),
            "max": top,
            "rank": float(nonzero.numel()),
            "condition": top / float(nonzero[-1]) if nonzero.numel() else float("nan"),
            "effective_dim": float((lam / (lam + damping)).sum()),
            "participation": float(lam.sum() ** 2 / (lam**2).sum()) if top > 0 else 0.0,
        }


def kronecker_spectrum(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``A (x) G`` (A: (a, a), G: (g, g) symmetric PSD), descending: (a * g,)."""
    return _outer_spectrum(metric_spectrum(A), metric_spectrum(G))


def metric_spectrum(metric: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric metric (P, P), descending: (P,)."""
    return torch.sort(torch.linalg.eigvalsh(metric.double()).clamp_min(0), descending=True).values


def _outer_spectrum(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.sort(torch.outer(a, g).reshape(-1), descending=True).values  # (a * g,)


def summarize(spectra: list[Spectrum], damping: float | dict[str, float]) -> dict[str, float]:
    """``{"<name>/<stat>": value}`` for every block and statistic of ``Spectrum.summary``.

    ``damping`` is one number, or one per kind: ``{"quantum": qng_damping, "classical": kfac_damping}``
    (the damping each preconditioner adds, so the effective dimension counts what it resolves).
    """
    per_kind = damping if isinstance(damping, dict) else {s.kind: damping for s in spectra}
    return {f"{s.name}/{k}": v for s in spectra for k, v in s.summary(per_kind[s.kind]).items()}


# --- spectra of a model on a batch ---------------------------------------------------------


def curvature_spectra(
    model: nn.Module, batch, kfac=None, *, loss_fn: LossFn | None = None, metric_samples: int = 64, seed: int = 0
) -> list[Spectrum]:
    """The spectrum of every curvature block of ``model`` on ``batch``, in module order.

    Quantum: for each ``QuantumLayer``, the full metric ``hybrid.metric_tensor(layer, inputs,
    approx=None)`` averaged over ``metric_samples`` of the inputs (all when fewer) that a
    training-mode forward pass of ``batch`` sends to it, computed exactly on the statevector
    simulator (the ideal state, also for layers on Qiskit backends) when the circuit compiles.
    Classical: for each ``nn.Linear`` K-FAC preconditions, ``kronecker_spectrum(A, G)`` of the
    factors of ``kfac`` (a ``KFACPreconditioner``, or an optimizer holding one, e.g.
    ``HybridOptimizer``: its running averages) when it has any; else of factors computed on this
    batch by a fresh ``KFACPreconditioner`` (empirical Fisher, no running average).

    Args:
        model: e.g. ``HybridGPT``; nothing of it is changed.
        batch: ``(x, y)`` token ids (B, T) of a language model, or what ``loss_fn`` takes.
        kfac: see above; pass the optimizer whose K-FAC is hooked to the model, so that its
            statistics ignore this forward pass.
        loss_fn: ``(model, batch) -> loss``; default: mean next-token cross-entropy.
        metric_samples: circuit inputs per layer the metric is averaged over.
        seed: seeds the choice of those inputs.

    Returns:
        ``[Spectrum]``: kind "classical" (with ``factors``) or "quantum", eigenvalues descending.
    """
    if metric_samples < 1:
        raise InputError(f"metric_samples must be at least 1, got {metric_samples}")
    given = next((pc for pc in _preconditioners(kfac) if isinstance(pc, KFACPreconditioner)), None)
    factors = {name: (A.clone(), G.clone()) for name, (A, G) in given.factors().items()} if given else {}
    fresh = not factors and any(isinstance(m, nn.Linear) and m.weight.requires_grad for m in model.modules())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantumLayer)}
    inputs = {}
    with _untouched(model, [given] if given else []):
        model.train()  # QuantumLayer keeps its inputs, K-FAC hooks capture, as in a training step
        # Cholesky: the fresh preconditioner decomposes its factors once; that is cheaper than eigh.
        counter = KFACPreconditioner(model, curvature_every=1, curvature_ema=0.0, inverse="cholesky") if fresh else None
        try:
            if counter is not None or layers:  # the forward pass fresh factors and circuit inputs come from
                loss = _loss(model, batch, loss_fn)
            if counter is not None:
                torch.autograd.grad(loss, counter.params, allow_unused=True)  # hooks see dL/d(output); .grad untouched
                counter.precondition(lr=0.0)  # the first update takes this batch's factors as they are
                keep = given.layers if given else counter.layers
                factors = {n: (A.clone(), G.clone()) for n, (A, G) in counter.factors().items() if n in keep}
        finally:
            if counter is not None:
                counter.remove()
        inputs = {name: layer.last_inputs for name, layer in layers.items() if layer.last_inputs is not None}
    generator = torch.Generator().manual_seed(seed)
    spectra = []
    for name, module in model.named_modules():
        if name in factors:
            a, g = (metric_spectrum(factor).cpu() for factor in factors[name])
            spectra.append(Spectrum(name, "classical", _outer_spectrum(a, g), (a, g)))
        elif name in inputs:
            rows = inputs[name]  # (N, n_inputs)
            if rows.shape[0] > metric_samples:
                rows = rows[torch.randperm(rows.shape[0], generator=generator)[:metric_samples].to(rows.device)]
            method = "exact" if module.program is not None else None  # the ideal state's metric, on any backend
            metric = metric_tensor(module, rows, approx=None, method=method)  # (P, P)
            spectra.append(Spectrum(name, "quantum", metric_spectrum(metric).cpu()))
    return spectra


def _loss(model: nn.Module, batch, loss_fn: LossFn | None, logits_out: list | None = None) -> torch.Tensor:
    """``loss_fn(model, batch)``, or the mean next-token cross-entropy of ``batch = (x, y)``."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    x, y = batch
    logits = lm_logits(model, x)  # (B, T, V)
    if logits_out is not None:
        logits_out.append(logits)
    return next_token_loss(logits, y)


def _preconditioners(obj) -> list:
    """The preconditioners of a ``HybridOptimizer`` (``KFAC`` and ``QNG`` are ones), or a
    preconditioner, list or dict of them."""
    if obj is None:
        return []
    if isinstance(obj, HybridOptimizer):
        return list(obj.preconditioners.values())
    if isinstance(obj, dict):
        return list(obj.values())
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, (KFACPreconditioner, QNGPreconditioner)):
        return [obj]
    raise InputError(
        f"{type(obj).__name__} has no preconditioners; pass a HybridOptimizer, KFAC or QNG optimizer, "
        "or K-FAC/QNG preconditioners"
    )


@contextmanager
def _untouched(model: nn.Module, kfacs: list[KFACPreconditioner]) -> Iterator[None]:
    """Put back what a diagnostic forward and backward pass changes: train/eval mode, the global
    RNG (dropout), every ``.grad`` (set to None inside), ``QuantumLayer.last_inputs``, and what
    the hooks of ``kfacs`` capture."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    last_inputs = [layer.last_inputs for layer in layers]
    training = model.training
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), ExitStack() as kept:
        for pc in kfacs:  # the next real step must see what K-FAC's hooks held before our pass
            kept.enter_context(pc.captures_kept())
        try:
            for p in params:
                p.grad = None
            yield
        finally:
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad
            for layer, last in zip(layers, last_inputs, strict=True):
                layer.last_inputs = last
            model.train(training)


# --- tracking over training ----------------------------------------------------------------


def track(
    model: nn.Module, batch, run_dir: str | Path, step: int, optimizer=None, *,
    damping: float | dict[str, float] = 1e-3, loss_fn: LossFn | None = None, metric_samples: int = 64,
) -> dict[str, float]:  # fmt: skip
    """Append ``{"step": step, **summarize(spectra, damping)}`` to ``run_dir/diagnostics.csv``
    and save the spectra to ``run_dir/spectra/step_<step>.pt`` (atomically, plain tensors).

    ``spectra = curvature_spectra(model, batch, optimizer, ...)``; a fixed ``batch`` makes the
    steps comparable. ``hybrid.train`` calls this every ``train.curvature_every`` steps.

    Returns:
        the row written.
    """
    run_dir = Path(run_dir)
    spectra = curvature_spectra(model, batch, optimizer, loss_fn=loss_fn, metric_samples=metric_samples)
    save_spectra(run_dir, step, spectra)  # before the row, so that every row has its spectra
    row = {"step": step, **summarize(spectra, damping)}
    append_row(run_dir / TABLE, row)
    return row


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
    path = folder / f"step_{step:07d}.pt"
    atomic_write(path, lambda file: torch.save({"step": int(step), "blocks": blocks}, file))
    return path


def load_spectra(run_dir: str | Path) -> dict[int, list[Spectrum]]:
    """``{step: [Spectrum]}`` of every step ``track`` saved in ``run_dir``, in step order."""
    spectra = {}
    for step, path in sorted(_spectra_files(run_dir).items()):
        blocks = torch.load(path, map_location="cpu", weights_only=True)["blocks"]
        spectra[step] = [
            Spectrum(b["name"], b["kind"], _outer_spectrum(*b["factors"]), tuple(b["factors"]))
            if "factors" in b
            else Spectrum(b["name"], b["kind"], b["eigenvalues"])
            for b in blocks
        ]
    return spectra


def _spectra_files(run_dir: str | Path) -> dict[int, Path]:
    folder = Path(run_dir) / SPECTRA
    files = folder.glob("step_*.pt") if folder.is_dir() else []
    return {int(m.group(1)): p for p in files if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))}


# --- loss along the gradient and the natural gradient ---------------------------------------


@dataclass
class LossSlices:
    """The loss along two unit directions through the current parameters, float64 arrays."""

    alphas: np.ndarray  # (K,) distance along each unit direction (Euclidean, parameter units)
    gradient: np.ndarray  # (K,) loss at theta - alpha * g / |g|, g the plain gradient
    natural: np.ndarray  # (K,) loss at theta - alpha * n / |n|, n the preconditioned gradient
    cosine: float  # <g, n> / (|g| |n|): 1 when the preconditioners do not turn the gradient


def loss_slices(model: nn.Module, batch, optimizer, alphas=None, *, loss_fn: LossFn | None = None) -> LossSlices:
    """The loss along the plain gradient and along the natural-gradient direction.

    .. math:: L(\\theta - \\alpha\\, d / \\lVert d \\rVert), \\quad d \\in \\{\\nabla L,\\ P(\\nabla L)\\}

    ``P`` is what the preconditioners of ``optimizer`` write into ``.grad`` on this batch (a
    ``HybridOptimizer`` step without gradient clipping: curvature updated when due, damping, the
    K-FAC KL clip at the optimizer's learning rates). Both directions live on the parameters the
    preconditioners own (the others have no natural gradient and stay put). The losses are
    evaluated in eval mode. Afterwards the parameters, gradients, preconditioner states (K-FAC
    factors, QNG metrics, their RNGs) and everything ``curvature_spectra`` keeps are as before.

    Args:
        model: the model ``optimizer`` trains.
        batch: ``(x, y)`` of a language model, or what ``loss_fn`` takes.
        optimizer: ``HybridOptimizer`` (``qng``, ``kfac`` or ``hybrid``), ``KFAC``, ``QNG``, or
            preconditioners (then K-FAC's KL clip is off).
        alphas: (K,) distances; default 21 points in [-1, 1].
        loss_fn: ``(model, batch) -> loss``; default: mean next-token cross-entropy. K-FAC with
            ``fisher="mc"`` needs the default (it samples labels from the logits).

    Raises:
        InputError: no preconditioner, or alphas not a finite 1-D sequence.
    """
    pcs = _preconditioners(optimizer)
    if not pcs:
        raise InputError(
            "the optimizer has no preconditioner, so no natural gradient; use optimizer hybrid, kfac or qng"
        )
    alphas = np.linspace(-1.0, 1.0, 21) if alphas is None else np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or not alphas.size or not np.isfinite(alphas).all():
        raise InputError(f"alphas must be a non-empty 1-D sequence of finite numbers, got shape {alphas.shape}")
    params = [p for pc in pcs for p in pc.params]
    lrs = [_lr_of(optimizer, pc) for pc in pcs]
    states = [copy.deepcopy(pc.state_dict()) for pc in pcs]
    start = [p.detach().clone() for p in params]
    kfacs = [pc for pc in pcs if isinstance(pc, KFACPreconditioner)]
    with _untouched(model, kfacs):
        try:
            model.train()
            logits: list[torch.Tensor] = []
            loss = _loss(model, batch, loss_fn, logits)
            for pc in kfacs if logits else []:
                pc.sampled_backward(logits[0])  # fisher="mc" on a curvature step: sampled labels, as train_step
            loss.backward()
            plain = _flat(params)  # (P,)
            for pc, lr in zip(pcs, lrs, strict=True):
                pc.precondition(lr=lr)
            natural = _flat(params)  # (P,)
            cosine = float(plain @ natural / (plain.norm() * natural.norm()).clamp_min(1e-300))
            model.eval()
            curves = [_slice(model, batch, loss_fn, params, start, d, alphas) for d in (plain, natural)]
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    p.copy_(p0)
            for pc, state in zip(pcs, states, strict=True):
                pc.load_state_dict(state)
    return LossSlices(alphas, curves[0], curves[1], cosine)


def _lr_of(optimizer, pc) -> float:
    """The learning rate of the param group holding ``pc``'s parameters (0 when there is none)."""
    for group in getattr(optimizer, "param_groups", []):
        if any(p is pc.params[0] for p in group["params"]):
            return float(group["lr"])
    return 0.0


def _flat(params: list[nn.Parameter]) -> torch.Tensor:
    """The gradients of ``params`` as one float64 vector (P,); a missing gradient is zero."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double() for p in params])


@torch.no_grad()
def _slice(model, batch, loss_fn, params, start, direction: torch.Tensor, alphas: np.ndarray) -> np.ndarray:
    """Loss at start - alpha * direction / |direction| for each alpha: (K,)."""
    unit = direction / direction.norm().clamp_min(1e-300)  # (P,)
    steps = unit.split([p.numel() for p in params])
    losses = []
    for alpha in alphas:
        for p, p0, d in zip(params, start, steps, strict=True):
            p.copy_(p0 - float(alpha) * d.view_as(p).to(p.dtype))
        losses.append(float(_loss(model, batch, loss_fn)))
    return np.asarray(losses)
