"""One optimizer for a hybrid model: preconditioners own disjoint parameter sets, stock torch steps update.

    loss.backward()
    optimizer.step():  for each preconditioner P:  grad_P <- P(grad_P)       (rewrites .grad in place)
                       SGD step on the preconditioned parameters               (the natural-gradient direction as is)
                       AdamW step on every other parameter                     (embeddings, norms, ...)

Preconditioners compose by partition, not by chain: every trainable parameter has exactly
one owner, checked when the optimizer is built. Momentum, weight decay and learning rates
come from torch; ``param_groups`` are the inner optimizers' groups, so torch LR schedulers
drive them.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from hybrid.config import OPTIMIZERS as OPTIMIZERS
from hybrid.config import OptimConfig
from hybrid.errors import InputError
from hybrid.optim.kfac import KFAC as KFAC
from hybrid.optim.kfac import KFACPreconditioner
from hybrid.models import QuantumProjection
from hybrid.optim.qng import QNG as QNG
from hybrid.optim.qng import QNGPreconditioner
from hybrid.quantum import QuantumLayer


class Preconditioner(Protocol):
    """Rewrites the gradients of the parameters it owns; never changes the parameters."""

    params: list[nn.Parameter]  # the parameters it owns

    def precondition(self, lr: float) -> None:
        """Update the curvature estimate when due, then replace each owned ``p.grad`` in place.
        ``lr`` is the step size the update will use (a KL-based clip needs it)."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging, e.g. ``{"metric_cond": ...}``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def trainable_parameters(model: nn.Module) -> dict[int, tuple[str, nn.Parameter]]:
    """``{id(p): (name, p)}`` for every trainable parameter.

    Raises:
        ValueError: a parameter tensor is registered under two names (tied weights).
    """
    seen: dict[int, tuple[str, nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        if id(p) in seen:
            raise ValueError(
                f"parameters {seen[id(p)][0]!r} and {name!r} are the same tensor (tied weights); "
                "untie them so that each parameter has one owner"
            )
        seen[id(p)] = (name, p)
    return seen


def parameter_groups(model: nn.Module, exclude: set[int] = frozenset()) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split the trainable parameters not in ``exclude`` (ids) into ``decay`` (linear and
    embedding matrices) and ``no_decay`` (biases, norms, circuit angles).

    Circuit weights are angles: decaying them toward 0 has no meaning, so they never decay.
    """
    circuit_weights = {id(m.weights) for m in model.modules() if isinstance(m, QuantumLayer)}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"decay": [], "no_decay": []}
    for key, (name, p) in trainable_parameters(model).items():
        if key in exclude:
            continue
        decays = p.dim() >= 2 and key not in circuit_weights
        groups["decay" if decays else "no_decay"].append((name, p))
    return groups


class HybridOptimizer(torch.optim.Optimizer):
    r"""Preconditioned SGD on the parameters of each preconditioner, AdamW on the rest.

    .. math:: \theta_P \leftarrow \theta_P - \mathrm{lr}_P\, P(\nabla_{\theta_P} L), \qquad
              \theta_{\text{rest}} \leftarrow \mathrm{AdamW}(\nabla_{\theta_{\text{rest}}} L)

    Args:
        model: the model whose trainable parameters are optimized, all of them.
        preconditioners: ``(name, preconditioner, lr)`` triples; each owns disjoint parameters.
        lr: AdamW's learning rate for the parameters no preconditioner owns.
        weight_decay: AdamW decay on matrices of the rest (not biases, norms, angles).
        betas: AdamW's betas.
        momentum: SGD momentum of the preconditioned groups.

    Raises:
        ValueError: tied weights, a parameter owned twice (the message names it), or a
            preconditioner owning a tensor that is not a trainable parameter of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        preconditioners: list[tuple[str, Preconditioner, float]] = (),
        *,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
    ):
        trainable = trainable_parameters(model)
        owner: dict[int, str] = {}
        for label, pc, _ in preconditioners:
            for p in pc.params:
                if id(p) not in trainable:
                    raise ValueError(f"preconditioner {label!r} owns a tensor that is not a model parameter")
                if id(p) in owner:
                    raise ValueError(
                        f"parameter {trainable[id(p)][0]!r} is owned by both {owner[id(p)]!r} and {label!r}"
                    )
                owner[id(p)] = label
        self.preconditioners = {label: pc for label, pc, _ in preconditioners}
        self.sgd = None
        if preconditioners:
            groups = [{"params": pc.params, "lr": plr, "name": label} for label, pc, plr in preconditioners]
            self.sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        rest = parameter_groups(model, exclude=set(owner))
        groups = [
            {"params": [p for _, p in rest[key]], "weight_decay": decay, "name": f"adamw_{key}"}
            for key, decay in (("decay", weight_decay), ("no_decay", 0.0))
            if rest[key]
        ]
        self.adamw = torch.optim.AdamW(groups, lr=lr, betas=betas) if groups else None
        super().__init__([p for o in self._inner() for g in o.param_groups for p in g["params"]], {"lr": lr})
        self._share_param_groups()

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.sgd, self.adamw) if o is not None]

    def _share_param_groups(self) -> None:
        # The very dicts of the inner optimizers, so that LR schedulers driving
        # ``self.param_groups`` drive them. Their load_state_dict builds new dicts: call again.
        self.param_groups = [g for o in self._inner() for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        """Precondition the owned gradients, then one SGD step and one AdamW step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.sgd is not None:
            for group in self.sgd.param_groups:
                self.preconditioners[group["name"]].precondition(lr=group["lr"])
            self.sgd.step()
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def stats(self) -> dict[str, float]:
        """What the preconditioners report, merged (e.g. ``metric_cond``)."""
        return {k: v for pc in self.preconditioners.values() for k, v in pc.stats().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "sgd": self.sgd.state_dict() if self.sgd else None,
            "adamw": self.adamw.state_dict() if self.adamw else None,
            "preconditioners": {label: pc.state_dict() for label, pc in self.preconditioners.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state.get("preconditioners", {})) != set(self.preconditioners):
            raise ValueError(
                f"state has preconditioners {sorted(state.get('preconditioners', {}))}, "
                f"this optimizer has {sorted(self.preconditioners)}"
            )
        for key, inner in (("sgd", self.sgd), ("adamw", self.adamw)):
            if (state.get(key) is None) != (inner is None):
                raise ValueError(f"state and optimizer disagree on whether there is an {key} part")
            if inner is not None:
                inner.load_state_dict(state[key])
        for label, pc in self.preconditioners.items():
            pc.load_state_dict(state["preconditioners"][label])
        self._share_param_groups()


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> HybridOptimizer:
    """The optimizer ``cfg.name`` asks for, over every trainable parameter of ``model``.

    ``hybrid`` (the default): K-FAC on the classical ``nn.Linear`` layers (SGD step at
    ``cfg.kfac_lr``), quantum natural gradient on the weights of every ``QuantumLayer`` (one
    metric block each, SGD step at ``cfg.qng_lr``), AdamW on the rest (embeddings, norms,
    biases of excluded layers). A model without circuits gets K-FAC + AdamW.
    ``kfac``: K-FAC on the ``nn.Linear`` layers, AdamW on the rest, circuit weights included.
    ``qng``: quantum natural gradient on the circuit weights, AdamW on the rest.
    ``adamw``: AdamW on everything.
    """
    if cfg.name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    preconditioners: list[tuple[str, Preconditioner, float]] = []
    if cfg.name in ("kfac", "hybrid"):
        preconditioners.append(("kfac", kfac_preconditioner(model, cfg), cfg.kfac_lr))
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    if cfg.name == "qng" and not layers:
        raise InputError("optimizer qng needs a circuit in the model; use --quantum head or ffn, or --optimizer adamw")
    if cfg.name in ("qng", "hybrid") and layers:
        preconditioners.append(("qng", qng_preconditioner(layers, cfg), cfg.qng_lr))
    return HybridOptimizer(
        model, preconditioners, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
        momentum=cfg.momentum,
    )  # fmt: skip


def qng_preconditioner(layers: list[QuantumLayer], cfg: OptimConfig) -> QNGPreconditioner:
    """QNG on the ``weights`` of ``layers`` with the ``qng_*`` settings of ``cfg``."""
    return QNGPreconditioner(
        layers, cfg.qng_damping, cfg.qng_approx, curvature_every=cfg.qng_curvature_every,
        metric_samples=cfg.qng_metric_samples,
    )  # fmt: skip


def kfac_preconditioner(model: nn.Module, cfg: OptimConfig) -> KFACPreconditioner:
    """K-FAC on ``model``'s ``nn.Linear`` layers with the ``kfac_*`` settings of ``cfg``.

    Unless ``cfg.kfac_to_angles``, the ``to_angles`` layer of every ``QuantumProjection`` is
    left to AdamW: natural-gradient steps there drive ``pi * tanh`` into saturation, where its
    gradient vanishes, the Fisher shrinks and the next steps grow (in tuning runs of the
    default model, training stalled at the unigram loss)."""
    angles = [f"{name}.to_angles" for name, m in model.named_modules() if isinstance(m, QuantumProjection)]
    return KFACPreconditioner(
        model, damping=cfg.kfac_damping, curvature_every=cfg.kfac_curvature_every,
        inverse_every=cfg.kfac_inverse_every, curvature_ema=cfg.curvature_ema, approx=cfg.kfac_approx,
        fisher=cfg.fisher, kl_clip=cfg.kl_clip, inverse=cfg.kfac_inverse,
        exclude=[*cfg.kfac_exclude.split(","), *([] if cfg.kfac_to_angles else angles)], max_dim=cfg.kfac_max_dim,
    )  # fmt: skip


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then cosine decay
    to ``cfg.min_lr_ratio`` at ``total_steps``. Drives ``torch.optim.lr_scheduler.LambdaLR``."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
