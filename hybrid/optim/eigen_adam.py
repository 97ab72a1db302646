r"""Adam in the Kronecker eigenbasis of K-FAC's factors (EKFAC, George et al. 2018; SOAP, Vyas et al. 2024).

    forward / backward (curvature steps only):  K-FAC's hooks keep each layer's x and g (KFACPreconditioner)
    precondition(lr):
        every curvature_every steps:  A, G <- running averages, as K-FAC
        every basis_every steps:      A = QA diag QA^T, G = QG diag QG^T (float64 eigh); carry m, v into the new basis
        every step:                   g~ = QG^T [dW | db] QA;  m, v <- Adam moments of g~ (bias-corrected)
                                      [dW | db] <- QG (m^ / (sqrt(v^) + eps)) QA^T + weight_decay [W | 0]
                                      (muP: dW of a hidden matrix x 1 / width_mult, as AdamW's rate there)

Adam's per-coordinate scaling replaces K-FAC's eigenvalues: no damping, no KL clip, and the
step is AdamW's: lr, betas, eps and decoupled weight decay as ``torch.optim.AdamW`` takes them.
Before the first basis (steps < basis_every) the bases are the identity, so the update is
AdamW's while the factors gather batches.

Layer selection (``kfac_layers``), the hooks (``LinearCapture``) and the running factors
(``fold_factors``) are the pieces K-FAC uses too; the step is this module's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hybrid.errors import check_choice, check_number
from hybrid.optim.kfac import FISHERS, KFAC_APPROX
from hybrid.optim.kfac_blocks import adam_direction, decompose
from hybrid.optim.kfac_capture import LinearCapture, fold_factors
from hybrid.optim.linear_layers import grad_matrix, kfac_layers, report_excluded, write_grad
from hybrid.optim.optimizer import settings_or_keywords
from hybrid.optim.preconditioned import PreconditionedSGD
from hybrid.optim.reduce import rank_and_size, share_from_owners


@dataclass
class EigenAdamSettings:
    """``[optim.eigen_adam]``: the settings ``EigenAdamPreconditioner`` takes, and its SGD step's lr."""

    lr: float = 3e-3  # peak learning rate, in AdamW's units (the SGD step applies the Adam direction as is)
    beta1: float = 0.9  # Adam's first-moment decay, in the eigenbasis
    beta2: float = 0.99  # Adam's second-moment decay, in the eigenbasis
    eps: float = 1e-8  # added to sqrt(v^) as in AdamW
    weight_decay: float = 0.01  # decoupled (AdamW) decay of the weight matrices; biases never decay
    basis_every: int = 50  # steps between eigendecompositions of A and G (the first at step basis_every)
    curvature_every: int = 10  # steps between factor updates (hooks are idle in between)
    curvature_ema: float = 0.95  # weight of the old factors in their running average
    approx: str = "expand"  # expand (every token a sample) or reduce (sum over the sequence first)
    fisher: str = "empirical"  # empirical (training gradients) or mc (one extra backward with sampled labels)
    exclude: str = ""  # comma-separated module names or fnmatch patterns left to AdamW, e.g. lm_head
    max_dim: int = 2048  # layers with a wider factor (a large-vocabulary head) are left to AdamW
    to_angles: bool = False  # on the to_angles layer before a circuit's pi*tanh; off: AdamW trains it

    def validate(self, prefix: str = "optim.eigen_adam.") -> EigenAdamSettings:
        """Raise InputError naming ``prefix + key`` for the first setting out of range."""
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        for key in ("beta1", "beta2", "curvature_ema"):
            check_number(f"{prefix}{key}", getattr(self, key), low=0, high=1, high_open=True)
        check_number(f"{prefix}eps", self.eps, low=0)
        check_number(f"{prefix}weight_decay", self.weight_decay, low=0)
        for key in ("basis_every", "curvature_every", "max_dim"):
            check_number(f"{prefix}{key}", getattr(self, key), low=1, integer=True)
        check_choice(f"{prefix}approx", self.approx, KFAC_APPROX)
        check_choice(f"{prefix}fisher", self.fisher, FISHERS)
        return self

    def patterns(self) -> list[str]:
        """``exclude`` as a list of patterns."""
        return [p.strip() for p in self.exclude.split(",") if p.strip()]


_DEFAULT = EigenAdamSettings()


def carry_moments(
    m: torch.Tensor, v: torch.Tensor, RG: torch.Tensor, RA: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Adam's moments of one layer, moved from an old eigenbasis to a new one.

    With ``RG = QG_new^T QG_old`` (d_out, d_out) and ``RA = QA_new^T QA_old`` (d_a, d_a):

    .. math:: m \leftarrow R_G\, m\, R_A^T, \qquad v \leftarrow (R_G \circ R_G)\, v\, (R_A \circ R_A)^T

    m is a matrix of gradients and rotates exactly (SOAP re-projects ``exp_avg`` the same
    way). v is a second moment per coordinate: SOAP keeps it, only permuting its rows and
    columns to follow the re-sorted eigenvectors (``get_orthogonal_matrix_QR``). Here each old
    coordinate's v is spread over the new coordinates by the squared overlaps, the second
    moment of the rotated gradient were the old coordinates uncorrelated. It equals SOAP's
    rule when the new basis is a signed permutation of the old one, and unlike it it stays
    meaningful when a full ``eigh`` returns an unrelated basis of a (near-)degenerate
    eigenspace, as it does for the null space of a low-rank factor. v stays >= 0.
    """
    return RG @ m @ RA.mT, (RG * RG) @ v @ (RA * RA).mT


class EigenAdamPreconditioner:
    r"""Adam on each selected ``nn.Linear``'s ``[W | b]`` in the eigenbasis of its K-FAC factors.

    .. math:: \nabla_W \leftarrow Q_G \frac{\hat m}{\sqrt{\hat v} + \epsilon} Q_A^T + \mathrm{wd}\, W,
              \qquad m, v = \mathrm{Adam\ moments\ of\ } Q_G^T \nabla_W Q_A

    An SGD step with momentum 0 at AdamW's lr then makes this AdamW in the rotated coordinates
    ``QG^T [W | b] QA``: with identity bases it is ``torch.optim.AdamW`` (decay on W, not b).
    Bases are refreshed every ``basis_every`` steps from the running factors (float64 ``eigh``;
    a factor that fails keeps its previous basis and counts in ``stats()``); the moments are
    carried into the new basis by ``carry_moments``. Step counts for bias correction are per
    layer, counting the steps on which the layer had a gradient, as AdamW's per parameter.

    Args:
        model: the model; the capture's hooks go on the layers ``kfac_layers`` selects.
        settings: an ``EigenAdamSettings`` already validated (``validate(cfg)``); its ``lr`` and
            ``to_angles`` are the SGD step's and the registry's.
        exclude: patterns left to AdamW besides ``settings.exclude``.
        seed: seeds the label sampling of ``fisher="mc"``.
        scales: ``{layer name: (lr multiplier, weight-decay multiplier)}`` of a layer's weight
            (its bias keeps the step's lr): muP's hidden matrices at 1 / width_mult, as AdamW's
            group ``adamw_hidden`` (``hybrid.optim.registry.eigen_adam_part``); absent: (1, 1).
        **keywords: ``EigenAdamSettings`` fields instead of (or over) ``settings``, validated here.

    Raises:
        InputError: bad keywords, or a model ``kfac_layers`` refuses.
    """

    def __init__(
        self, model: nn.Module, settings: EigenAdamSettings | None = None, *, exclude: Iterable[str] = (),
        seed: int = 0, scales: Mapping[str, tuple[float, float]] | None = None, **keywords,
    ):  # fmt: skip
        s = self.settings = settings_or_keywords(EigenAdamSettings, settings, keywords)
        self.scales = dict(scales or {})
        self.beta1, self.beta2, self.eps, self.weight_decay = s.beta1, s.beta2, s.eps, s.weight_decay
        self.basis_every, self.curvature_every, self.curvature_ema = s.basis_every, s.curvature_every, s.curvature_ema
        self.fisher = s.fisher
        self.layers, self.excluded = kfac_layers(model, [*s.patterns(), *exclude], s.max_dim)
        report_excluded(type(self).__name__, self.layers, self.excluded)  # once, when the optimizer is built
        self.params = [p for m in self.layers.values() for p in (m.weight, m.bias) if p is not None and p.requires_grad]
        self.steps = 0  # precondition() calls so far
        self.fallbacks = 0
        self.capture = LinearCapture(self.layers, s.fisher, s.approx, self._curvature_due, seed)
        self.A: dict[str, torch.Tensor] = {}
        self.G: dict[str, torch.Tensor] = {}
        self.bases: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (QA, QG), once refreshed
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (m, v) in the current basis
        self.counts: dict[str, int] = {}  # name -> Adam steps taken (bias correction)

    def _curvature_due(self) -> bool:
        return self.steps % self.curvature_every == 0

    @contextmanager
    def captures_kept(self) -> Iterator[None]:
        """On exit, the hooks hold again what they held on entry (see ``KFACPreconditioner``)."""
        with self.capture.kept():
            yield

    def remove(self) -> None:
        """Remove the hooks; the preconditioner no longer sees the model."""
        self.capture.remove()

    def before_backward(self, logits: torch.Tensor) -> None:
        """``fisher="mc"`` on a curvature step: the sampled-label backward of ``LinearCapture``."""
        self.capture.sampled_backward(logits, self.params)

    @torch.no_grad()
    def precondition(self, lr: float) -> None:
        """Update the factors and bases when due, then write each owned ``.grad``'s AdamW
        direction in the eigenbasis (see the class docstring; ``lr`` unused)."""
        if self._curvature_due():
            self.fallbacks += fold_factors(self.A, self.G, self.capture.batch_factors(), self.curvature_ema)
        self.capture.clear()
        if self.steps > 0 and self.steps % self.basis_every == 0:
            self.refresh_bases()
        for name, layer in self.layers.items():
            grad = grad_matrix(layer)  # (d_out, d_a)
            if grad is None:
                continue
            write_grad(layer, self._adam_update(name, grad))  # (d_out, d_a), in the weight's own layout
            lr_scale, decay_scale = self.scales.get(name, (1.0, 1.0))
            layer.weight.grad.add_(layer.weight, alpha=self.weight_decay * decay_scale)
            if lr_scale != 1.0:
                layer.weight.grad.mul_(lr_scale)  # the SGD step at lr: this weight's rate is lr * lr_scale
        self.steps += 1

    def _adam_update(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """(d_out, d_a) gradient -> the Adam direction in the layer's basis, rotated back."""
        QA, QG = self.bases.get(name, (None, None))
        rotated = grad if QA is None else QG.mT @ grad @ QA  # (d_out, d_a)
        if name not in self.moments:
            self.moments[name] = (torch.zeros_like(grad), torch.zeros_like(grad))
        self.counts[name] = self.counts.get(name, 0) + 1
        m, v = self.moments[name]
        direction = adam_direction(rotated, m, v, self.counts[name], self.beta1, self.beta2, self.eps)
        return direction if QA is None else QG @ direction @ QA.mT

    def refresh_bases(self) -> None:
        """Eigendecompose every layer's running A and G (float64) and move its moments there.
        Data parallel: layer i is decomposed on rank i % world size alone and broadcast."""
        rank, size = rank_and_size()
        owners = {(name, key): i % size for i, name in enumerate(self.A) for key in ("A", "G")}
        results = {(name, key): decompose([M.double()], "eigh")[0] for name in self.A
                   for key, M in (("A", self.A[name]), ("G", self.G[name])) if owners[name, key] == rank}  # fmt: skip
        if size > 1:
            like = {(n, k): (M.new_empty(M.shape, dtype=torch.float64), M.new_empty(M.shape[0], dtype=torch.float64))
                    for n in self.A for k, M in (("A", self.A[n]), ("G", self.G[n]))}  # fmt: skip
            results = share_from_owners(results, owners, like)
        for name in self.A:
            old = self.bases.get(name)
            new = []
            for i, M in enumerate((self.A[name], self.G[name])):
                result = results[name, "AG"[i]]
                if result is None:
                    self.fallbacks += 1  # keep the previous basis of this factor (identity if none)
                    result = (old[i],) if old else (torch.eye(M.shape[0], dtype=torch.float64, device=M.device),)
                new.append(result[0].to(self.A[name].dtype))
            self.set_basis(name, *new)

    def set_basis(self, name: str, QA: torch.Tensor, QG: torch.Tensor) -> None:
        """Make ``(QA, QG)`` (orthogonal, (d_a, d_a) and (d_out, d_out)) layer ``name``'s basis,
        carrying its Adam moments from the previous one (``carry_moments``)."""
        if name in self.moments:
            QA_old, QG_old = self.bases.get(name, (None, None))
            RA = QA.mT if QA_old is None else QA.mT @ QA_old  # (d_a, d_a)
            RG = QG.mT if QG_old is None else QG.mT @ QG_old  # (d_out, d_out)
            self.moments[name] = carry_moments(*self.moments[name], RG, RA)
        self.bases[name] = (QA, QG)

    def stats(self) -> dict[str, float]:
        """``eigen_adam_fallbacks``: factors skipped or decompositions kept because they were
        not finite or failed, so far."""
        return {"eigen_adam_fallbacks": float(self.fallbacks)}

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{layer name: (A, G)}``, the running averages (live tensors), as ``KFACPreconditioner.factors``."""
        return {name: (self.A[name], self.G[name]) for name in self.A}

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "fallbacks": self.fallbacks, "A": dict(self.A), "G": dict(self.G),
            "generator": self.capture.generator.get_state(),
            "bases": {n: tuple(b) for n, b in self.bases.items()},
            "moments": {n: tuple(mv) for n, mv in self.moments.items()},
            "counts": dict(self.counts),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict()`` (checkpoints of the subclass-of-K-FAC days carry K-FAC's unused keys too)."""
        unknown = (set(state["A"]) | set(state["bases"]) | set(state["moments"])) - set(self.layers)
        if unknown:
            raise ValueError(f"eigenbasis-Adam state has layers {sorted(unknown)} this model does not")

        def to(name, tensors):
            return tuple(t.to(self.layers[name].weight.device, copy=True) for t in tensors)

        self.steps, self.fallbacks = int(state["steps"]), int(state["fallbacks"])
        self.A = {n: to(n, (t,))[0] for n, t in state["A"].items()}
        self.G = {n: to(n, (t,))[0] for n, t in state["G"].items()}
        self.capture.generator.set_state(state["generator"])
        self.bases = {n: to(n, b) for n, b in state["bases"].items()}
        self.moments = {n: to(n, mv) for n, mv in state["moments"].items()}
        self.counts = {n: int(c) for n, c in state["counts"].items()}


class EigenAdamKFAC(PreconditionedSGD):
    r"""Eigenbasis Adam alone on the ``nn.Linear`` layers: the preconditioner, then SGD (momentum 0).

    .. math:: \theta \leftarrow \theta - \mathrm{lr}\,\bigl(Q_G \tfrac{\hat m}{\sqrt{\hat v} + \epsilon} Q_A^T
              + \mathrm{wd}\, W\bigr)

    Only the preconditioned parameters are optimized: train the rest with another optimizer,
    or use ``hybrid.optim.HybridOptimizer``.

    Args:
        model: the model whose ``nn.Linear`` layers are optimized.
        lr: AdamW's learning rate.
        exclude, seed: ``EigenAdamPreconditioner``'s.
        **settings: the other ``EigenAdamSettings`` fields (beta1, weight_decay, basis_every, ...).
    """

    def __init__(
        self, model: nn.Module, lr: float = _DEFAULT.lr, *, exclude: Iterable[str] = (), seed: int = 0, **settings
    ):  # fmt: skip
        checked = EigenAdamSettings(lr=lr, **settings).validate(prefix="")
        self.eigen_adam = EigenAdamPreconditioner(model, checked, exclude=exclude, seed=seed)
        super().__init__(self.eigen_adam, "eigen_adam", lr=lr)
