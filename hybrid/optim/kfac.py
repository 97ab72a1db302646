r"""K-FAC for the linear layers of a model (Martens & Grosse 2015; Eschenhagen et al. 2023):
``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's attention and MLP projections).

The bookkeeping: which layers, hooks, when to refresh what, state. The curvature math of one
layer is in ``hybrid.optim.kfac_blocks``.

    forward / backward (curvature steps only):  hooks keep each layer's input x and output gradient g
    precondition(lr):
        every curvature_every steps:   A <- ema A + (1 - ema) A_batch,   G <- ema G + (1 - ema) G_batch
        every inverse_every steps:     eigendecompose A and G (or Cholesky-invert their damped forms)
        every step:                    grad <- nu (G (x) A + damping I)^-1 grad,  nu = KL clip (<= 1)
        graft:                         each layer's update rescaled to the norm of AdamW's (lr in AdamW units)
        steps < adam_steps:            grad <- AdamW's direction; factors every step, decomposed when K-FAC starts

Weights and biases are one matrix ``[W | b]`` of shape (d_out, d_in + 1), flattened row-major
as PyTorch stores ``W``; its curvature block is ``kron(G, A)``. ``Conv1D`` stores its weight
transposed, (d_in, d_out) with y = x W + b: its ``[W^T | b]`` is the same matrix, so its
factors are those of the equivalent ``nn.Linear`` and its update is transposed back. Hooks are registered in one
place (``__init__``), store raw tensors, and return at once on steps whose factors are not
refreshed; all math happens in ``precondition``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.errors import InputError, check_choice, check_number
from hybrid.optim.kfac_blocks import (
    adam_direction,
    batch_factors,
    decompose,
    eigen_precondition,
    factored_damping,
    inverse_precondition,
)
from hybrid.optim.linear_layers import is_transposed, kfac_layers, layer_dims, report_excluded
from hybrid.optim.preconditioned import PreconditionedSGD
from hybrid.optim.reduce import rank_and_size, row_offset, share_from_owners, weighted_mean

FISHERS = ("empirical", "mc")
KFAC_APPROX = ("expand", "reduce")
INVERSES = ("eigh", "cholesky")


@dataclass
class KFACSettings:
    """``[optim.kfac]``: the keyword arguments of ``KFACPreconditioner`` and of its SGD step.

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

    def preconditioner_kwargs(self) -> dict:
        """The keyword arguments of ``KFACPreconditioner`` (all but the SGD step's and ``to_angles``)."""
        kwargs = dataclasses.asdict(self)
        for key in ("lr", "momentum", "to_angles"):
            kwargs.pop(key)
        kwargs["exclude"] = [p for p in self.exclude.split(",") if p.strip()]
        return kwargs


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

    Defaults are ``KFACSettings``'s, so the Python API and ``hybrid train`` agree.

    Args:
        model: the model; hooks go on the selected layers.
        damping: lambda > 0, in the units of the Fisher of one loss term.
        curvature_every: steps between factor updates (the hooks do nothing on other steps).
        inverse_every: steps between decompositions of the factors.
        curvature_ema: weight of the old factors in the running average; the first update
            takes the batch factors as they are.
        approx: ``"expand"`` or ``"reduce"`` for inputs with a sequence dimension.
        fisher: ``"empirical"`` (the training gradients) or ``"mc"`` (one more backward with
            labels drawn from the model: ``sampled_backward``, which the training loop calls).
        kl_clip: kappa, the bound on ``s^T (F + damping) s = nu^2 lr^2 <Delta, grad>`` (about twice
            the KL divergence) of the step ``s = lr nu Delta``; 0 disables the clip.
        inverse: ``"eigh"`` or ``"cholesky"``.
        exclude, max_dim: see ``kfac_layers``.
        graft, adam_steps, beta1, beta2, eps: see above.
        seed: seeds the label sampling of ``fisher="mc"``.

    Raises:
        InputError: bad settings, or a model ``kfac_layers`` refuses.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = _DEFAULT.damping,
        curvature_every: int = _DEFAULT.curvature_every,
        inverse_every: int = _DEFAULT.inverse_every,
        curvature_ema: float = _DEFAULT.curvature_ema,
        approx: str = _DEFAULT.approx,
        fisher: str = _DEFAULT.fisher,
        kl_clip: float = _DEFAULT.kl_clip,
        inverse: str = _DEFAULT.inverse,
        exclude: Iterable[str] = (),
        max_dim: int = _DEFAULT.max_dim,
        graft: bool = _DEFAULT.graft,
        adam_steps: int = _DEFAULT.adam_steps,
        beta1: float = _DEFAULT.beta1,
        beta2: float = _DEFAULT.beta2,
        eps: float = _DEFAULT.eps,
        seed: int = 0,
    ):
        KFACSettings(damping=damping, curvature_every=curvature_every, inverse_every=inverse_every,
                     curvature_ema=curvature_ema, approx=approx, fisher=fisher, kl_clip=kl_clip, inverse=inverse,
                     max_dim=max_dim, graft=graft, adam_steps=adam_steps, beta1=beta1, beta2=beta2,
                     eps=eps).validate(prefix="")  # fmt: skip
        kfac_approx = approx
        self.damping, self.curvature_every, self.inverse_every = damping, curvature_every, inverse_every
        self.curvature_ema, self.kfac_approx, self.fisher = curvature_ema, kfac_approx, fisher
        self.kl_clip, self.inverse = kl_clip, inverse
        self.graft, self.adam_steps, self.betas, self.eps = graft, adam_steps, (beta1, beta2), eps
        self.layers, self.excluded = kfac_layers(model, exclude, max_dim)
        report_excluded(type(self).__name__, self.layers, self.excluded)  # once, when the optimizer is built
        owned = [(name, p) for name, m in self.layers.items() for p in (m.weight, m.bias)
                 if p is not None and p.requires_grad]  # fmt: skip
        self.params = [p for _, p in owned]
        self._owner = [name for name, _ in owned]  # the layer of each of params
        self.steps = 0  # precondition() calls so far
        self.fallbacks = 0
        self.generator = torch.Generator().manual_seed(seed)  # CPU: same labels on any device
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self._decomposed: dict[str, dict[str, torch.Tensor]] = {}  # name -> {"QA", "lA", ...} or {"A_inv", ...}
        self._batched: list[tuple[list[str], tuple[torch.Tensor, ...]]] = []  # stacked per shape, for bmm
        self._kl_scale = torch.ones(())
        self._adam: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}  # index in params -> (m, v, steps)
        self._sampling = False
        self._inputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        self._grads: dict[str, dict[int, torch.Tensor]] = {name: {} for name in self.layers}  # forward index -> grad
        self._handles = [
            layer.register_forward_hook(partial(self._save_input, name), with_kwargs=True)
            for name, layer in self.layers.items()
        ]

    # -- hooks: the only hidden control flow; raw tensors only, nothing off curvature steps ----------

    def _curvature_due(self) -> bool:
        return self.steps < self.adam_steps or self.steps % self.curvature_every == 0

    def _save_input(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if not (self._curvature_due() and torch.is_grad_enabled() and output.requires_grad):
            return  # off curvature steps, evaluation and generation: one check and out
        self._inputs[name].append((args[0] if args else kwargs["input"]).detach())
        # A tensor hook on the output, not a module backward hook: it still sees the right
        # gradient when an in-place activation modifies the output afterwards, and it pairs the
        # gradient with its own forward: a forward that is never backpropagated (a loss printed
        # with grad enabled) has no gradient and is left out of the factors.
        output.register_hook(partial(self._save_grad, name, len(self._inputs[name]) - 1))

    def _save_grad(self, name: str, index: int, grad: torch.Tensor) -> None:
        if self._sampling == (self.fisher == "mc"):  # mc: only the sampled backward; empirical: only the real one
            grads = self._grads[name]
            grads[index] = grads[index] + grad.detach() if index in grads else grad.detach()

    @contextmanager
    def captures_kept(self) -> Iterator[None]:
        """On exit, the hooks hold again what they held on entry: forward and backward passes
        made inside (a diagnostic, a loss probe) do not reach the next factor update."""
        saved = [(held, {name: copy.copy(v) for name, v in held.items()}) for held in (self._inputs, self._grads)]
        try:
            yield
        finally:
            for held, before in saved:
                held.update(before)

    def remove(self) -> None:
        """Remove the hooks; the preconditioner no longer sees the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def sampled_backward(self, logits: torch.Tensor) -> None:
        """With ``fisher="mc"`` on a curvature step: backpropagate the mean cross-entropy of
        labels drawn from ``softmax(logits)`` (the true Fisher in expectation), so that the hooks
        see those output gradients. Leaves ``.grad`` alone. Call it after the forward pass and
        before ``loss.backward()``; a no-op otherwise.

        Args:
            logits: (..., V) the model's output with its graph; the training loss must be the
                mean cross-entropy over the same positions.
        """
        if self.fisher != "mc" or not self._curvature_due() or not logits.requires_grad:
            return
        flat = logits.reshape(-1, logits.shape[-1])  # (M, V)
        cdf = F.softmax(flat.detach().double(), dim=-1).cumsum(-1)  # (M, V)
        # Data parallel: every rank draws all ranks' uniforms and keeps its rows, as one process would.
        start, total = row_offset(flat.shape[0], flat.device)
        u = torch.rand(total, 1, generator=self.generator, dtype=torch.float64)[start : start + flat.shape[0]]
        u = u.to(flat.device)  # (M, 1)
        labels = torch.searchsorted(cdf, u, right=True).clamp_(max=flat.shape[-1] - 1).squeeze(1)  # (M,)
        self._sampling = True
        try:
            torch.autograd.grad(F.cross_entropy(flat, labels), self.params, retain_graph=True, allow_unused=True)
        finally:
            self._sampling = False

    # -- the step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def precondition(self, lr: float) -> None:
        """Update the factors and their decompositions when due, then replace each owned
        ``.grad`` by its clipped natural-gradient direction (see the class docstring)."""
        if self._curvature_due():
            self._update_factors(self._batch_factors())
        for captured in (*self._inputs.values(), *self._grads.values()):
            captured.clear()
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

    def _batch_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """This step's A and G per layer, averaged over the ranks of data-parallel training.

        Rank r's factors average its own M_r rows, and its g are of its own mean loss, so
        ``M_r g`` is the per-token gradient, as in one process: A and G over the global batch
        are the ranks' weighted by their rows (M_r for G, A's rows for A), one all-reduce.
        """
        factors, counts = {}, {}
        for name, layer in self.layers.items():
            x, g = self._inputs[name], self._grads[name]
            if not x and layer.weight.grad is not None:
                raise RuntimeError(
                    f"K-FAC saw no forward pass of {name!r} but it has a gradient: its weight is used "
                    "outside its forward(); exclude it from K-FAC"
                )
            if not g and layer.weight.grad is None:
                continue  # the layer did not take part in this step's loss
            if not g:
                hint = "; with fisher='mc', call sampled_backward(logits) before loss.backward()"
                hint *= self.fisher == "mc"
                raise RuntimeError(f"K-FAC saw {len(x)} forward passes of {name!r} but no backward through them{hint}")
            paired = sorted(g)  # forwards that were backpropagated
            factors[name] = batch_factors([x[i] for i in paired], [g[i] for i in paired], self.kfac_approx,
                                          layer.bias is not None)  # fmt: skip
            tokens = [x[i].shape[:-1].numel() for i in paired]  # G's rows; A's unless reduce sums over positions
            rows = [t if self.kfac_approx == "expand" or x[i].dim() == 2 else x[i].shape[0]
                    for t, i in zip(tokens, paired, strict=True)]  # fmt: skip
            counts[name] = (sum(rows), sum(tokens))
        if rank_and_size()[1] == 1:
            return factors
        for name, layer in self.layers.items():  # a layer without this step's data here still takes part
            if name not in factors:
                d_out, d_in = layer_dims(layer)
                d_a = d_in + (layer.bias is not None)
                w = layer.weight
                factors[name] = (w.new_zeros(d_a, d_a), w.new_zeros(d_out, d_out))
                counts[name] = (0, 0)
        return weighted_mean({n: factors[n] for n in self.layers}, counts)

    def _update_factors(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (A, G) in factors.items():
            if not (torch.isfinite(A).all() and torch.isfinite(G).all()):
                self.fallbacks += 1  # a bad batch must not poison the running averages
                continue
            if name in self.A:
                self.A[name].lerp_(A, 1 - self.curvature_ema)
                self.G[name].lerp_(G, 1 - self.curvature_ema)
            else:
                self.A[name], self.G[name] = A, G

    def _decompose(self) -> None:
        """Decompose every factor, batched by size, in float64; failures keep the old result.
        Data parallel: layer i is decomposed on rank i % world size alone and broadcast."""
        rank, size = rank_and_size()
        owners = {(name, key): i % size for i, name in enumerate(self.A) for key in ("A", "G")}
        todo: dict[tuple, list[tuple[str, str, torch.Tensor]]] = {}  # (size, device) -> [(layer, "A"/"G", matrix)]
        for name in (n for n in self.A if owners[n, "A"] == rank):
            A, G = self.A[name].double(), self.G[name].double()
            if self.inverse == "cholesky":
                A, G = factored_damping(A, G, self.damping)
            for key, M in (("A", A), ("G", G)):
                todo.setdefault((M.shape[0], M.device), []).append((name, key, M))
        results = {}
        for items in todo.values():
            for (name, key, _), result in zip(items, decompose([M for *_, M in items], self.inverse), strict=True):
                results[name, key] = result if result is None or self.inverse == "eigh" else (result,)
        if size > 1:
            f64 = {"dtype": torch.float64, "device": next(iter(self.A.values())).device}
            like = {(n, k): (torch.empty(d, d, **f64), torch.empty(d, **f64)) if self.inverse == "eigh"
                    else (torch.empty(d, d, **f64),)
                    for n in self.A for k, d in (("A", self.A[n].shape[0]), ("G", self.G[n].shape[0]))}  # fmt: skip
            results = share_from_owners(results, owners, like)
        for (name, key), result in results.items():
            if result is None:
                self.fallbacks += 1
                continue
            dtype = self.A[name].dtype
            entry = self._decomposed.setdefault(name, {})
            if self.inverse == "eigh":
                entry[f"Q{key}"], entry[f"l{key}"] = result[0].to(dtype), result[1]
            else:
                entry[f"{key}_inv"] = result[0].to(dtype)
        self._batch_decompositions()

    def _batch_decompositions(self) -> None:
        """Stack the decompositions of layers of equal shape, so one bmm serves them all."""
        groups: dict[tuple, list[str]] = {}
        for name, entry in self._decomposed.items():
            if len(entry) == (4 if self.inverse == "eigh" else 2):  # both factors decomposed at least once
                layer = self.layers[name]
                key = (*layer_dims(layer), layer.bias is not None, layer.weight.device)
                groups.setdefault(key, []).append(name)
        self._batched = []
        for names in groups.values():
            entries = [self._decomposed[n] for n in names]
            if self.inverse == "eigh":
                QG, QA = torch.stack([e["QG"] for e in entries]), torch.stack([e["QA"] for e in entries])
                lam = torch.stack([e["lG"][:, None] * e["lA"][None, :] for e in entries])  # (k, d_out, d_a), float64
                ops = (QG, QA, (1 / (lam + self.damping)).to(QG.dtype))
            else:
                ops = (torch.stack([e["G_inv"] for e in entries]), torch.stack([e["A_inv"] for e in entries]))
            self._batched.append((names, ops))

    def _precondition_grads(self, lr: float, adam: list[torch.Tensor | None] | None = None) -> None:
        apply = eigen_precondition if self.inverse == "eigh" else inverse_precondition
        done, vg = [], torch.zeros((), dtype=torch.float64)
        for names, ops in self._batched:
            grads = [self._grad_matrix(n) for n in names]
            idx = [i for i, g in enumerate(grads) if g is not None]
            if not idx:
                continue
            if len(idx) < len(names):
                ops = tuple(op[idx] for op in ops)
            grad = torch.stack([grads[i] for i in idx])  # (k, d_out, d_in + 1)
            update = apply(grad, *ops)  # (k, d_out, d_in + 1)
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
                self._write(name, u)
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

    def _write(self, name: str, update: torch.Tensor) -> None:
        """(d_out, d_a) update -> the layer's ``weight.grad`` (transposed back for a Conv1D) and ``bias.grad``."""
        layer = self.layers[name]
        d_in = layer_dims(layer)[1]
        grad = layer.weight.grad.T if is_transposed(layer) else layer.weight.grad  # (d_out, d_in), a view
        grad.copy_(update[:, :d_in])
        if layer.bias is not None and layer.bias.grad is not None:
            layer.bias.grad.copy_(update[:, d_in])

    def _grad_matrix(self, name: str) -> torch.Tensor | None:
        """The layer's gradient as ``[dW | db]`` (d_out, d_in + bias), W in nn.Linear's layout."""
        layer = self.layers[name]
        if layer.weight.grad is None:
            return None
        grad = layer.weight.grad.T if is_transposed(layer) else layer.weight.grad  # (d_out, d_in)
        if layer.bias is None:
            return grad
        bias = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(layer.bias)
        return torch.cat([grad, bias[:, None]], dim=1)  # (d_out, d_in + 1)

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
            "steps": self.steps, "fallbacks": self.fallbacks, "inverse": self.inverse,
            "A": dict(self.A), "G": dict(self.G),
            "decomposed": {name: dict(entry) for name, entry in self._decomposed.items()},
            "generator": self.generator.get_state(), "kl_scale": float(self._kl_scale),
            "adam": {i: (m, v, t) for i, (m, v, t) in self._adam.items()},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["A"]) - set(self.layers)
        if unknown or state["inverse"] != self.inverse:
            raise ValueError(
                f"K-FAC state does not fit this model and settings (layers {sorted(unknown)}, "
                f"inverse {state['inverse']!r} vs {self.inverse!r})"
            )

        def to(name, t):  # dtypes as saved: factors in the weights' dtype, eigenvalues in float64
            return t.to(self.layers[name].weight.device, copy=True)

        self.steps, self.fallbacks = int(state["steps"]), int(state["fallbacks"])
        self.A = {n: to(n, t) for n, t in state["A"].items()}
        self.G = {n: to(n, t) for n, t in state["G"].items()}
        self._decomposed = {n: {k: to(n, t) for k, t in e.items()} for n, e in state["decomposed"].items()}
        self.generator.set_state(state["generator"])
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
        lr, momentum, weight_decay: of the SGD step.
        **kwargs: ``KFACPreconditioner`` settings (damping, curvature_every, ...).
    """

    def __init__(
        self, model: nn.Module, lr: float = _DEFAULT.lr, momentum: float = _DEFAULT.momentum,
        weight_decay: float = 0.0, **kwargs,
    ):  # fmt: skip
        self.kfac = KFACPreconditioner(model, **kwargs)
        super().__init__(self.kfac, "kfac", lr=lr, momentum=momentum, weight_decay=weight_decay)


def sampled_fisher_backward(optimizer: torch.optim.Optimizer, logits: torch.Tensor) -> None:
    """``sampled_backward(logits)`` of every K-FAC preconditioner of ``optimizer`` (a
    ``HybridOptimizer`` or ``KFAC``). Training loops call it between the forward pass and
    ``loss.backward()``; it does nothing unless ``fisher="mc"`` and a curvature step is due."""
    for pc in getattr(optimizer, "preconditioners", {}).values():
        if isinstance(pc, KFACPreconditioner):
            pc.sampled_backward(logits)
