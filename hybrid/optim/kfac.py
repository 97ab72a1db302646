r"""K-FAC for the linear layers of a model (Martens & Grosse 2015; Eschenhagen et al. 2023):
``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections).

The bookkeeping: which layers, when to refresh what, state. The hooks that capture each
layer's x and g are ``hybrid.optim.kfac_capture``'s; the curvature math of one layer, and the
two block types (``eigh``, ``cholesky``), are in ``hybrid.optim.kfac_blocks``.

    forward / backward (curvature steps only):  the capture keeps each layer's input x and output gradient g
    precondition(lr):
        every curvature_every steps:   A <- ema A + (1 - ema) A_batch,   G <- ema G + (1 - ema) G_batch
        every inverse_every steps:     decompose A and G (the block type: eigh, or Cholesky of their damped forms)
        every step:                    grad <- nu (G (x) A + damping I)^-1 grad,  nu = KL clip (<= 1)
        graft:                         each layer's update rescaled to the norm of AdamW's (lr in AdamW units)
        steps < adam_steps:            grad <- AdamW's direction; factors every step, decomposed when K-FAC starts

Weights and biases are one matrix ``[W | b]`` of shape (d_out, d_in + 1), flattened row-major
as PyTorch stores ``W``; its curvature block is ``kron(G, A)``. ``Conv1D`` stores its weight
transposed, (d_in, d_out) with y = x W + b: its ``[W^T | b]`` is the same matrix, so its
factors are those of the equivalent ``nn.Linear`` and its update is transposed back
(``hybrid.optim.linear_layers.grad_matrix`` and ``write_grad``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hybrid.errors import InputError, check_choice, check_number
from hybrid.optim.kfac_blocks import BLOCKS, adam_direction
from hybrid.optim.kfac_capture import LinearCapture, fold_factors
from hybrid.optim.linear_layers import grad_matrix, kfac_layers, layer_dims, report_excluded, write_grad
from hybrid.optim.optimizer import settings_or_keywords
from hybrid.optim.preconditioned import PreconditionedSGD
from hybrid.optim.reduce import rank_and_size, share_from_owners

FISHERS = ("empirical", "mc")
KFAC_APPROX = ("expand", "reduce")
INVERSES = tuple(BLOCKS)


@dataclass
class KFACSettings:
    """``[optim.kfac]``: the settings ``KFACPreconditioner`` takes, and its SGD step's.

    Defaults are tuned on the default model (README, K-FAC); damping is in units of the Fisher
    of one loss term (one token).
    """

    lr: float = 1.0  # peak SGD learning rate of the K-FAC layers (the schedule scales it like optim.lr)
    momentum: float = 0.0  # SGD momentum of the K-FAC layers
    damping: float = 1e-2  # lambda in (G (x) A + lambda I)^-1, > 0 (1e-3 stalls here at the unigram loss)
    curvature_every: int = 10  # steps between factor updates (hooks are idle in between)
    inverse_every: int = 10  # steps between decompositions of the factors (50 leaves stale inverses early on)
    curvature_ema: float = 0.95  # weight of the old factors in their running average
    approx: str = "expand"  # expand (every token a sample) or reduce (sum over the sequence first)
    fisher: str = "empirical"  # empirical (training gradients) or mc (one extra backward with sampled labels)
    kl_clip: float = 3e-2  # bound on s^T (F + damping) s (about 2 KL) of each step s; 0 disables; moot with graft
    inverse: str = "eigh"  # eigh (exact damping) or cholesky (factored damping, cheaper on big factors)
    exclude: str = ""  # comma-separated module names or fnmatch patterns left to AdamW, e.g. lm_head
    max_dim: int = 2048  # layers with a wider factor (a large-vocabulary head) are left to AdamW
    to_angles: bool = False  # K-FAC on the to_angles layer before a circuit's pi*tanh; off: AdamW trains it
    graft: bool = False  # rescale each layer's update to the norm of AdamW's (then lr is in AdamW units, ~3e-3)
    adam_steps: int = 0  # first steps take AdamW's direction while the factors fill (every step); lr in AdamW units
    beta1: float = 0.9  # Adam's first-moment decay, for graft and adam_steps
    beta2: float = 0.99  # Adam's second-moment decay, for graft and adam_steps
    eps: float = 1e-8  # Adam's eps, for graft and adam_steps

    def validate(self, prefix: str = "optim.kfac.") -> KFACSettings:
        """Raise InputError naming ``prefix + key`` for the first setting out of range."""
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        check_number(f"{prefix}momentum", self.momentum, low=0, high=1, high_open=True)
        check_number(f"{prefix}damping", self.damping, low=0, low_open=True)
        for key in ("curvature_every", "inverse_every", "max_dim"):
            check_number(f"{prefix}{key}", getattr(self, key), low=1, integer=True)
        for key in ("curvature_ema", "beta1", "beta2"):
            check_number(f"{prefix}{key}", getattr(self, key), low=0, high=1, high_open=True)
        check_number(f"{prefix}kl_clip", self.kl_clip, low=0)
        check_number(f"{prefix}adam_steps", self.adam_steps, low=0, integer=True)
        check_number(f"{prefix}eps", self.eps, low=0)
        if not isinstance(self.graft, bool):
            raise InputError(f"{prefix}graft must be true or false, got {self.graft!r}")
        check_choice(f"{prefix}approx", self.approx, KFAC_APPROX)
        check_choice(f"{prefix}fisher", self.fisher, FISHERS)
        check_choice(f"{prefix}inverse", self.inverse, INVERSES)
        return self

    def patterns(self) -> list[str]:
        """``exclude`` as a list of patterns."""
        return [p.strip() for p in self.exclude.split(",") if p.strip()]


_DEFAULT = KFACSettings()


class KFACPreconditioner:
    r"""Kronecker-factored natural gradient for every linear layer (``nn.Linear``, ``Conv1D``)
    of ``model`` that ``kfac_layers`` selects; a ``hybrid.optim.Preconditioner``.

    .. math:: \nabla_W \leftarrow \nu\,(G \otimes A + \lambda I)^{-1} \nabla_W, \qquad
              \nu = \min\bigl(1, \sqrt{\kappa / (\mathrm{lr}^2 \sum_l \langle \Delta_l, \nabla_l \rangle)}\bigr)

    A and G are normalized as in ``batch_factors`` (``kron(G, A)`` is the Fisher of one loss
    term). ``inverse="eigh"`` applies the damping exactly (``G (x) A + damping I``; float64
    eigendecompositions). ``"cholesky"`` is cheaper on large factors and damps each factor,
    ``(G + sqrt(damping)/pi I) (x) (A + pi sqrt(damping) I)`` with pi = sqrt((tr A / d_A) /
    (tr G / d_G)) (Martens & Grosse 2015, sec. 6.3). A factor that is not finite or fails to
    decompose keeps its previous decomposition (counted in ``stats()["kfac_fallbacks"]``); a
    layer with none yet passes its gradient through unchanged (with ``graft``: AdamW's direction).

    Two aids borrowed from Shampoo (grafting, ``start_preconditioning_step``), both driven by
    Adam moments of each owned parameter kept here (bias-corrected, ``beta1``, ``beta2``, ``eps``;
    no weight decay: that is the SGD step's):

    - ``graft``: each layer's update ``[dW | db]`` is rescaled to the Frobenius norm of AdamW's
      direction ``m^ / (sqrt(v^) + eps)`` for that layer, so K-FAC picks the direction and Adam
      the step length; the SGD lr is then in AdamW's units (~3e-3, not 1.0) and the KL clip
      has no effect (it is skipped).
    - ``adam_steps``: the first ``adam_steps`` steps write AdamW's direction instead, while the
      factors are updated on every one of them (not every ``curvature_every``), and decomposed
      at step ``adam_steps``: K-FAC starts from factors that have seen ``adam_steps`` batches.
      The lr must suit both phases, so use it with ``graft`` (or an lr in AdamW's units).

    ``kl_clip`` is kappa, the bound on ``s^T (F + damping) s = nu^2 lr^2 <Delta, grad>`` (about
    twice the KL divergence) of the step ``s = lr nu Delta``; 0 disables the clip.

    Args:
        model: the model; the capture's hooks go on the layers ``kfac_layers`` selects.
        settings: a ``KFACSettings`` already validated (``validate(cfg)`` checks ``[optim.kfac]``);
            its ``lr``, ``momentum`` and ``to_angles`` are the SGD step's and the registry's.
        exclude: patterns left to AdamW besides ``settings.exclude`` (see ``kfac_layers``).
        seed: seeds the label sampling of ``fisher="mc"``.
        damping_scales: ``{layer name: multiplier of the damping}`` for some layers (muP's
            readouts, ``hybrid.optim.registry.mup_width``); the others take ``damping`` as is.
        **keywords: ``KFACSettings`` fields instead of (or over) ``settings``, validated here,
            e.g. ``KFACPreconditioner(model, damping=1e-3)``; defaults are ``KFACSettings``'s.

    Raises:
        InputError: bad keywords, or a model ``kfac_layers`` refuses.
    """

    def __init__(
        self, model: nn.Module, settings: KFACSettings | None = None, *, exclude: Iterable[str] = (), seed: int = 0,
        damping_scales: dict[str, float] | None = None, **keywords,
    ):  # fmt: skip
        s = self.settings = settings_or_keywords(KFACSettings, settings, keywords)
        self.damping, self.curvature_every, self.inverse_every = s.damping, s.curvature_every, s.inverse_every
        self.curvature_ema, self.fisher, self.kl_clip = s.curvature_ema, s.fisher, s.kl_clip
        self.graft, self.adam_steps, self.betas, self.eps = s.graft, s.adam_steps, (s.beta1, s.beta2), s.eps
        self.block = BLOCKS[s.inverse]
        self.layers, self.excluded = kfac_layers(model, [*s.patterns(), *exclude], s.max_dim)
        report_excluded(type(self).__name__, self.layers, self.excluded)  # once, when the optimizer is built
        scales = damping_scales or {}
        self._damping = {name: self.damping * scales.get(name, 1.0) for name in self.layers}
        owned = [(name, p) for name, m in self.layers.items() for p in (m.weight, m.bias)
                 if p is not None and p.requires_grad]  # fmt: skip
        self.params = [p for _, p in owned]
        self._owner = [name for name, _ in owned]  # the layer of each of params
        self.steps = 0  # precondition() calls so far
        self.fallbacks = 0
        self.capture = LinearCapture(self.layers, s.fisher, s.approx, self._curvature_due, seed)
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self._decomposed: dict[str, dict[str, torch.Tensor]] = {}  # name -> the block type's entry ({"QA", ...})
        self._batched: list[tuple[list[str], tuple[torch.Tensor, ...]]] = []  # stacked per shape, for bmm
        self._kl_scale = torch.ones(())
        self._adam: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # index in params -> (m, v, steps)

    def _curvature_due(self) -> bool:
        return self.steps < self.adam_steps or self.steps % self.curvature_every == 0

    @contextmanager
    def captures_kept(self) -> Iterator[None]:
        """On exit, the hooks hold again what they held on entry: forward and backward passes
        made inside (a diagnostic, a loss probe) do not reach the next factor update."""
        with self.capture.kept():
            yield

    def remove(self) -> None:
        """Remove the hooks; the preconditioner no longer sees the model."""
        self.capture.remove()

    def sampled_backward(self, logits: torch.Tensor) -> None:
        """With ``fisher="mc"`` on a curvature step: backpropagate the mean cross-entropy of
        labels drawn from ``softmax(logits)`` (the true Fisher in expectation), so that the hooks
        see those output gradients. Leaves ``.grad`` alone. Call it after the forward pass and
        before ``loss.backward()``; a no-op otherwise.

        Args:
            logits: (..., V) the model's output with its graph; the training loss must be the
                mean cross-entropy over the same positions.
        """
        self.capture.sampled_backward(logits, self.params)

    before_backward = sampled_backward  # what HybridOptimizer.before_backward calls

    # -- the step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def precondition(self, lr: float) -> None:
        """Update the factors and their decompositions when due, then replace each owned
        ``.grad`` by its clipped natural-gradient direction (see the class docstring)."""
        if self._curvature_due():
            self.fallbacks += fold_factors(self.A, self.G, self.capture.batch_factors(), self.curvature_ema)
        self.capture.clear()
        adam = self._adam_directions() if self.graft or self.steps < self.adam_steps else None
        if self.steps < self.adam_steps:
            for p, direction in zip(self.params, adam, strict=True):
                if direction is not None:
                    p.grad.copy_(direction)
        else:
            if (self.steps % self.inverse_every == 0 or self.steps == self.adam_steps) and self.A:
                self._decompose()
            self._precondition_grads(lr, adam)
        self.steps += 1

    def _adam_directions(self) -> list[torch.Tensor | None]:
        """Update the Adam moments of every owned parameter with its gradient; AdamW's
        direction (without decay) per parameter, None where it has no gradient."""
        directions = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                directions.append(None)
                continue
            m, v, t = self._adam.get(i, (torch.zeros_like(p), torch.zeros_like(p), 0))
            self._adam[i] = (m, v, t + 1)
            directions.append(adam_direction(p.grad, m, v, t + 1, *self.betas, self.eps))
        return directions

    def _decompose(self) -> None:
        """Decompose every factor as the block type does, batched by size, in float64; failures
        keep the old result. Data parallel: layer i is decomposed on rank i % world size alone
        and broadcast."""
        rank, size = rank_and_size()
        owners = {(name, key): i % size for i, name in enumerate(self.A) for key in ("A", "G")}
        todo: dict[tuple, list[tuple[str, str, torch.Tensor]]] = {}  # (size, device) -> [(layer, "A"/"G", matrix)]
        for name in (n for n in self.A if owners[n, "A"] == rank):
            A, G = self.block.damped(self.A[name].double(), self.G[name].double(), self._damping[name])
            for key, M in (("A", A), ("G", G)):
                todo.setdefault((M.shape[0], M.device), []).append((name, key, M))
        results = {}
        for items in todo.values():
            for (name, key, _), result in zip(items, self.block.decompose([M for *_, M in items]), strict=True):
                results[name, key] = result
        if size > 1:
            f64 = {"dtype": torch.float64, "device": next(iter(self.A.values())).device}
            like = {(n, k): self.block.like(d, **f64)
                    for n in self.A for k, d in (("A", self.A[n].shape[0]), ("G", self.G[n].shape[0]))}  # fmt: skip
            results = share_from_owners(results, owners, like)
        for (name, key), result in results.items():
            if result is None:
                self.fallbacks += 1
                continue
            self._decomposed.setdefault(name, {}).update(self.block.entry(key, result, self.A[name].dtype))
        self._batch_decompositions()

    def _batch_decompositions(self) -> None:
        """Stack the decompositions of layers of equal shape, so one bmm serves them all."""
        groups: dict[tuple, list[str]] = {}
        for name, entry in self._decomposed.items():
            if len(entry) == len(self.block.keys):  # both factors decomposed at least once
                layer = self.layers[name]
                key = (*layer_dims(layer), layer.bias is not None, layer.weight.device, self._damping[name])
                groups.setdefault(key, []).append(name)
        self._batched = [(names, self.block.operators([self._decomposed[n] for n in names], self._damping[names[0]]))
                         for names in groups.values()]  # fmt: skip

    def _precondition_grads(self, lr: float, adam: list[torch.Tensor | None] | None = None) -> None:
        done, vg = [], torch.zeros((), dtype=torch.float64)
        for names, ops in self._batched:
            grads = [grad_matrix(self.layers[n]) for n in names]
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                continue
            if len(idx) < len(names):
                ops = tuple(op[idx] for op in ops)
            grad = torch.stack([grads[i] for i in idx])  # (k, d_out, d_in + 1)
            update = self.block.apply(grad, *ops)  # (k, d_out, d_in + 1)
            vg = vg.to(grad.device) + (update * grad).sum(dtype=torch.float64)
            done.append(([names[i] for i in idx], update))
        # KL clip (Ba et al. 2017): lr^2 <update, grad> = s^T (F + damping) s of the step s = lr update, ~2 KL
        scale = torch.ones((), dtype=torch.float64, device=vg.device)
        if self.kl_clip > 0 and lr > 0 and not self.graft:
            scale = torch.where(vg > 0, (self.kl_clip / (lr**2 * vg)).sqrt().clamp(max=1.0), scale)
        for names, update in done:
            update.mul_(scale.to(update.dtype))
            if self.graft:  # Frobenius norm of each layer's update := that of AdamW's direction for it
                norm = update.flatten(1).norm(dim=1)  # (k,)
                target = torch.stack([self._adam_norm(n, adam) for n in names]).to(norm)  # (k,)
                update.mul_(torch.where(norm > 0, target / norm, 1.0)[:, None, None])
            for name, u in zip(names, update, strict=True):
                write_grad(self.layers[name], u)
        if self.graft:  # layers without a decomposition yet: AdamW's direction, not the raw gradient
            written = {name for names, _ in done for name in names}
            for i, p in enumerate(self.params):
                if adam[i] is not None and self._owner[i] not in written:
                    p.grad.copy_(adam[i])
        self._kl_scale = scale

    def _adam_norm(self, name: str, adam: list[torch.Tensor | None]) -> torch.Tensor:
        """Frobenius norm of AdamW's direction for layer ``name``'s ``[W | b]``."""
        parts = [adam[i] for i, owner in enumerate(self._owner) if owner == name and adam[i] is not None]
        return torch.stack([d.square().sum() for d in parts]).sum().sqrt()

    # -- what it reports and saves ----------------------------------------------------------------------

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer name: (A, G)}``, the running averages (live tensors; clone to keep them):
        A (d_in + 1, d_in + 1) with the bias as the last row and column, G (d_out, d_out),
        normalized as in ``batch_factors``."""
        return {name: (self.A[name], self.G[name]) for name in self.A}

    def stats(self) -> dict[str, float]:
        """``kfac_kl_scale``: nu of the latest step (1 = not clipped); ``kfac_fallbacks``: factors
        skipped or decompositions kept because they were not finite or failed, so far."""
        return {"kfac_kl_scale": float(self._kl_scale), "kfac_fallbacks": float(self.fallbacks)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "fallbacks": self.fallbacks, "inverse": self.block.name,
            "A": dict(self.A), "G": dict(self.G),
            "decomposed": {name: dict(entry) for name, entry in self._decomposed.items()},
            "generator": self.capture.generator.get_state(), "kl_scale": float(self._kl_scale),
            "adam": {i: (m, v, t) for i, (m, v, t) in self._adam.items()},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["A"]) - set(self.layers)
        if unknown or state["inverse"] != self.block.name:
            raise ValueError(
                f"K-FAC state does not fit this model and settings (layers {sorted(unknown)}, "
                f"inverse {state['inverse']!r} vs {self.block.name!r})"
            )

        def to(name, t):  # dtypes as saved: factors in the weights' dtype, eigenvalues in float64
            return t.to(self.layers[name].weight.device, copy=True)

        self.steps, self.fallbacks = int(state["steps"]), int(state["fallbacks"])
        self.A = {n: to(n, t) for n, t in state["A"].items()}
        self.G = {n: to(n, t) for n, t in state["G"].items()}
        self._decomposed = {n: {k: to(n, t) for k, t in e.items()} for n, e in state["decomposed"].items()}
        self.capture.generator.set_state(state["generator"])
        self._kl_scale = torch.tensor(float(state["kl_scale"]), dtype=torch.float64)
        devices = [p.device for p in self.params]
        self._adam = {int(i): (m.to(devices[int(i)], copy=True), v.to(devices[int(i)], copy=True), int(t))
                      for i, (m, v, t) in state.get("adam", {}).items()}  # fmt: skip
        self._batch_decompositions()


class KFAC(PreconditionedSGD):
    r"""K-FAC alone: precondition the gradients of the linear layers, then a stock SGD step.

    .. math:: \theta \leftarrow \theta - \mathrm{lr}\,\nu\,(G \otimes A + \lambda I)^{-1} \nabla_\theta L

    Only the preconditioned parameters are optimized: train the rest with another optimizer,
    or use ``hybrid.optim.HybridOptimizer``, which puts AdamW on them.

    Args:
        model: the model whose linear layers (``nn.Linear``, ``Conv1D``) are preconditioned.
        lr, momentum: of the SGD step (``KFACSettings``' ``lr`` and ``momentum``).
        weight_decay: of the SGD step.
        exclude, seed: ``KFACPreconditioner``'s.
        **settings: the other ``KFACSettings`` fields (damping, curvature_every, ...).
    """

    def __init__(
        self, model: nn.Module, lr: float = _DEFAULT.lr, momentum: float = _DEFAULT.momentum,
        weight_decay: float = 0.0, *, exclude: Iterable[str] = (), seed: int = 0, **settings,
    ):  # fmt: skip
        checked = KFACSettings(lr=lr, momentum=momentum, **settings).validate(prefix="")
        self.kfac = KFACPreconditioner(model, checked, exclude=exclude, seed=seed)
        super().__init__(self.kfac, "kfac", lr=lr, momentum=momentum, weight_decay=weight_decay)
