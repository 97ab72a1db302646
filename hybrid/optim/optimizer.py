"""One optimizer for a hybrid model: preconditioners own disjoint parameter sets, stock torch steps update.

    loss.backward()
    optimizer.step():  for each preconditioner P:  grad_P <- P(grad_P)       (rewrites .grad in place)
                       SGD step on the preconditioned parameters               (the natural-gradient direction as is)
                       Muon step on the matrices given to Muon, if any         (torch.optim.Muon)
                       AdamW step on every other parameter                     (embeddings, norms, ...)

Preconditioners compose by partition, not by chain: every trainable parameter has exactly
one owner, checked when the optimizer is built. Momentum, weight decay and learning rates
come from torch; ``param_groups`` are the inner optimizers' groups, so torch LR schedulers
drive them.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

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
    r"""Preconditioned SGD on the parameters of each preconditioner, Muon on the matrices given
    to it, AdamW on the rest: one ``step()``, one ``state_dict()``, one list of ``param_groups``.

    .. math:: \theta_P \leftarrow \theta_P - \mathrm{lr}_P\, P(\nabla_{\theta_P} L), \qquad
              \theta_{\text{rest}} \leftarrow \mathrm{AdamW}(\nabla_{\theta_{\text{rest}}} L)

    Args:
        model: the model whose trainable parameters are optimized, all of them (with
            ``train_rest``); None with ``train_rest=False`` (a standalone ``KFAC`` or ``QNG``).
        preconditioners: ``(name, preconditioner, lr)`` or ``(name, preconditioner, lr, group
            options)`` (e.g. ``{"momentum": 0.9}``); each owns disjoint parameters.
        lr: AdamW's learning rate for the parameters no preconditioner owns.
        weight_decay: AdamW decay on matrices of the rest (not biases, norms, angles).
        betas: AdamW's betas.
        momentum: SGD momentum of the preconditioned groups without their own.
        muon: ``(params, options)``: ``torch.optim.Muon`` on these 2-D parameters with these
            keyword arguments (lr, momentum, ...), or None.
        train_rest: put AdamW on every trainable parameter of ``model`` nobody else owns.
        hidden: ``(params, lr scale, weight-decay scale)``: AdamW's group ``adamw_hidden`` for
            these matrices, at ``lr * lr scale`` and ``weight_decay * weight-decay scale`` (muP's
            1 / width_mult on the hidden matrices); None: they join ``adamw_decay``.

    Raises:
        ValueError: tied weights, a parameter owned twice (the message names it), or a
            preconditioner owning a tensor that is not a trainable parameter of ``model``.
    """

    def __init__(
        self,
        model: nn.Module | None,
        preconditioners: list[tuple] = (),
        *,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        muon: tuple[list[nn.Parameter], dict] | None = None,
        train_rest: bool = True,
        hidden: tuple[list[nn.Parameter], float, float] | None = None,
    ):
        parts = [(row[0], row[1].params) for row in preconditioners] + ([("muon", muon[0])] if muon else [])
        trainable = trainable_parameters(model) if model is not None else {}
        owner: dict[int, str] = {}
        for label, params in parts:
            for p in params:
                if model is not None and id(p) not in trainable:
                    raise ValueError(f"preconditioner {label!r} owns a tensor that is not a model parameter")
                if id(p) in owner:
                    name = trainable[id(p)][0] if id(p) in trainable else f"a tensor of shape {tuple(p.shape)}"
                    raise ValueError(f"parameter {name!r} is owned by both {owner[id(p)]!r} and {label!r}")
                owner[id(p)] = label
        self.preconditioners = {row[0]: row[1] for row in preconditioners}
        self.sgd = self.muon = self.adamw = None
        if preconditioners:
            groups = [{"params": pc.params, "lr": plr, "name": label, **(rest[0] if rest else {})}
                      for label, pc, plr, *rest in preconditioners]  # fmt: skip
            self.sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        if muon:
            self.muon = torch.optim.Muon([{"params": list(muon[0]), "name": "muon"}], **muon[1])
        if train_rest:
            rest = parameter_groups(model, exclude=set(owner))
            scaled = {id(p) for p in hidden[0]} if hidden else set()
            rest["hidden"] = [(n, p) for n, p in rest["decay"] if id(p) in scaled]
            rest["decay"] = [(n, p) for n, p in rest["decay"] if id(p) not in scaled]
            lr_scale, decay_scale = hidden[1:] if hidden else (1.0, 1.0)
            groups = [
                {"params": [p for _, p in rest[key]], "weight_decay": decay, "name": f"adamw_{key}", **extra}
                for key, decay, extra in (("decay", weight_decay, {}), ("no_decay", 0.0, {}),
                                          ("hidden", weight_decay * decay_scale, {"lr": lr * lr_scale}))
                if rest[key]
            ]  # fmt: skip
            self.adamw = torch.optim.AdamW(groups, lr=lr, betas=betas) if groups else None
        params = [p for o in self._inner() for g in o.param_groups for p in g["params"]]
        if not params:
            raise ValueError("the optimizer has no parameters to train: the model has no trainable parameter")
        super().__init__(params, {"lr": lr})
        self._share_param_groups()

    def _inner(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.sgd, self.muon, self.adamw) if o is not None]

    def _share_param_groups(self) -> None:
        # The very dicts of the inner optimizers, so that LR schedulers driving
        # ``self.param_groups`` drive them. Their load_state_dict builds new dicts: call again.
        self.param_groups = [g for o in self._inner() for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        """Precondition the owned gradients, then the SGD, Muon and AdamW steps."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.sgd is not None:
            for group in self.sgd.param_groups:
                self.preconditioners[group["name"]].precondition(lr=group["lr"])
        for inner in self._inner():
            inner.step()
        return loss

    def stats(self) -> dict[str, float]:
        """What the preconditioners report, merged (e.g. ``metric_cond``)."""
        return {k: v for pc in self.preconditioners.values() for k, v in pc.stats().items()}

    def state_dict(self) -> dict[str, Any]:
        state = {
            "sgd": self.sgd.state_dict() if self.sgd else None,
            "adamw": self.adamw.state_dict() if self.adamw else None,
            "preconditioners": {label: pc.state_dict() for label, pc in self.preconditioners.items()},
        }
        if self.muon is not None:
            state["muon"] = self.muon.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state.get("preconditioners", {})) != set(self.preconditioners):
            raise ValueError(
                f"state has preconditioners {sorted(state.get('preconditioners', {}))}, "
                f"this optimizer has {sorted(self.preconditioners)}"
            )
        for key, inner in (("sgd", self.sgd), ("muon", self.muon), ("adamw", self.adamw)):
            if (state.get(key) is None) != (inner is None):
                raise ValueError(f"state and optimizer disagree on whether there is an {key} part")
            if inner is not None:
                inner.load_state_dict(state[key])
        for label, pc in self.preconditioners.items():
            pc.load_state_dict(state["preconditioners"][label])
        self._share_param_groups()
