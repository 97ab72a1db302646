"""Directions of an update: the loss along the gradient and the natural gradient, and how far
the step an optimizer applies turns away from the raw gradient.

    slices = loss_slices(model, batch, optimizer)          # loss along -gradient and -natural gradient
    step_cosines(model, batch, optimizer, blocks)          # {block: cos(gradient, -applied step)}

Both leave the model, its gradients, the optimizer and the global RNG as they found them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hybrid.diagnostics.spectra import CAPTURING, LossFn, batch_loss, preconditioners_of, untouched
from hybrid.errors import InputError
from hybrid.optim.optimizer import HybridOptimizer


def step_cosines(
    model: nn.Module, batch, optimizer: HybridOptimizer, blocks: dict[str, list[nn.Parameter]], *,
    loss_fn: LossFn | None = None,
) -> dict[str, float]:  # fmt: skip
    r"""The cosine between the raw gradient and the step ``optimizer`` applies, per block.

    .. math:: \cos_b = \langle g_b, -\Delta\theta_b \rangle / (\lVert g_b \rVert \lVert \Delta\theta_b \rVert)

    ``g`` is the gradient of the loss on ``batch`` (unclipped, before any preconditioner), ``Delta
    theta`` what one ``optimizer.step()`` on it changes: preconditioner (curvature refreshed when
    due), momentum, Muon's orthogonalization, AdamW's moments and decoupled weight decay. 1: the
    block moves along steepest descent; 0: orthogonal to it; NaN: the block did not move or has
    no gradient. Afterwards the parameters and the optimizer's state (``state_dict``) are as before.

    Args:
        model: the model ``optimizer`` trains.
        batch: ``(x, y)`` of a language model, or what ``loss_fn`` takes.
        optimizer: a ``HybridOptimizer`` (every preset builds one).
        blocks: ``{name: parameters}``, e.g. a K-FAC layer's weight and bias, a circuit's weights.
        loss_fn: ``(model, batch) -> loss``; default: mean next-token cross-entropy.

    Raises:
        TypeError: ``optimizer`` is not a ``HybridOptimizer``.
    """
    if not isinstance(optimizer, HybridOptimizer):
        raise TypeError(f"step cosines need the HybridOptimizer that trains the model, got {type(optimizer).__name__}")
    params = list(model.parameters())
    kfacs = [pc for pc in optimizer.preconditioners.values() if isinstance(pc, CAPTURING)]
    state = copy.deepcopy(optimizer.state_dict())  # live tensors inside: the step would change them
    start = [p.detach().clone() for p in params]
    with untouched(model, kfacs):
        try:
            model.train()
            logits: list[torch.Tensor] = []
            loss = batch_loss(model, batch, loss_fn, logits)
            if logits:
                optimizer.before_backward(logits[0])  # fisher="mc" on a curvature step, as train_step
            loss.backward()
            raw = {id(p): p.grad.detach().clone() if p.grad is not None else None for p in params}
            optimizer.step()
            moved = {id(p): (p.detach() - p0) for p, p0 in zip(params, start, strict=True)}
        finally:
            with torch.no_grad():
                for p, p0 in zip(params, start, strict=True):
                    p.copy_(p0)
            optimizer.load_state_dict(state)
    cosines = {}
    for name, members in blocks.items():
        if any(raw[id(p)] is None for p in members):
            cosines[name] = float("nan")
            continue
        g = torch.cat([raw[id(p)].reshape(-1).double() for p in members])  # (P,)
        step = -torch.cat([moved[id(p)].reshape(-1).double() for p in members])  # (P,)
        norm = float(g.norm() * step.norm())
        cosines[name] = float(g @ step) / norm if norm > 0 else float("nan")
    return cosines


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
        optimizer: ``HybridOptimizer`` (``qng``, ``kfac`` or ``hybrid``), ``KFAC``, ``QNG``, or a
            lone ``KFACPreconditioner`` / ``QNGPreconditioner`` (then K-FAC's KL clip is off).
        alphas: (K,) distances; default 21 points in [-1, 1].
        loss_fn: ``(model, batch) -> loss``; default: mean next-token cross-entropy. K-FAC with
            ``fisher="mc"`` needs the default (it samples labels from the logits).

    Raises:
        InputError: no preconditioner, or alphas not a finite 1-D sequence.
        TypeError: ``optimizer`` is none of the above.
    """
    pcs = preconditioners_of(optimizer)
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
    kfacs = [pc for pc in pcs if isinstance(pc, CAPTURING)]
    with untouched(model, kfacs):
        try:
            model.train()
            logits: list[torch.Tensor] = []
            loss = batch_loss(model, batch, loss_fn, logits)
            for pc in kfacs if logits else []:
                pc.before_backward(logits[0])  # fisher="mc" on a curvature step: sampled labels, as train_step
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
        losses.append(float(batch_loss(model, batch, loss_fn)))
    return np.asarray(losses)
