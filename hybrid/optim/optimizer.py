"""One optimizer for a hybrid model: a list of parts over disjoint parameter sets, each a stock torch step.

    logits = model(x)
    optimizer.before_backward(logits)   each part's hook on the forward pass (K-FAC fisher="mc": sampled labels)
    loss.backward()
    optimizer.step():  for each part with a preconditioner P:  grad_P <- P(grad_P)    (rewrites .grad in place)
                       for each part: its torch optimizer's step                      (SGD, Muon, AdamW, ...)

A part is what one row of ``hybrid.optim.registry.ROWS`` builds: its parameters, the stock
``torch.optim`` optimizer that updates them, and optionally the preconditioner that rewrites
their gradients first (then the optimizer is SGD at the preconditioner's lr). AdamW on every
parameter no row owns is the last part, ``adamw``. Parts compose by partition, not by chain:
every trainable parameter has exactly one owner, checked when the optimizer is built.
Momentum, weight decay and learning rates come from torch; ``param_groups`` are the parts'
own groups, so torch LR schedulers drive them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from hybrid.quantum import QuantumLayer


class Preconditioner(Protocol):
    """Rewrites the gradients of the parameters it owns; never changes the parameters."""

    params: list[nn.Parameter]  # the parameters it owns

    def before_backward(self, logits: torch.Tensor) -> None:
        """Called with the model's output (with its graph) before ``loss.backward()``; most do nothing."""

    def precondition(self, lr: float) -> None:
        """Update the curvature estimate when due, then replace each owned ``p.grad`` in place.
        ``lr`` is the step size the update will use (a KL-based clip needs it)."""

    def stats(self) -> dict[str, float]:
        """Scalars worth logging, e.g. ``{"metric_cond": ...}``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def settings_or_keywords(kind: type, settings: Any | None, keywords: dict[str, Any]) -> Any:
    """A preconditioner's settings: ``settings`` as given, trusted (``validate(cfg)`` checked its
    section before any work), or ``kind(**keywords)`` (over ``settings``, if given) checked here,
    once: the Python API's ``KFACPreconditioner(model, damping=1e-3)``.

    Raises:
        InputError: a keyword out of range (named without a section prefix).
    """
    if not keywords and settings is not None:
        return settings
    base = settings if settings is not None else kind()
    return dataclasses.replace(base, **keywords).validate(prefix="")


@dataclass
class Part:
    """One row's share of the optimizer: ``optimizer`` (a stock ``torch.optim`` optimizer) steps
    its parameters, after ``preconditioner``, if any, rewrote their gradients.

    ``name`` is the key of its state in ``HybridOptimizer.state_dict()`` and the ``name`` of its
    param groups (AdamW's are ``adamw_decay``, ``adamw_no_decay``, ``adamw_hidden``).
    """

    name: str
    optimizer: torch.optim.Optimizer
    preconditioner: Preconditioner | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def preconditioned_sgd(name: str, preconditioner: Preconditioner, lr: float, **options) -> Part:
    """The part of a preconditioner: its parameters, torch's SGD at ``lr`` with ``options``
    (momentum, weight_decay, ...) applying the preconditioned direction."""
    group = {"params": list(preconditioner.params), "lr": lr, "name": name, **options}
    return Part(name, torch.optim.SGD([group], lr=lr), preconditioner)


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


def adamw_rest(model: nn.Module, owned: set[int], lr: float, weight_decay: float, betas: tuple[float, float],
               hidden: tuple[list[nn.Parameter], float, float] | None = None) -> Part | None:  # fmt: skip
    """The part ``adamw``: AdamW on every trainable parameter of ``model`` not in ``owned`` (ids),
    decay on matrices only (``parameter_groups``); None when nothing is left.

    ``hidden``: ``(params, lr scale, weight-decay scale)``: the group ``adamw_hidden`` for these
    matrices, at ``lr * lr scale`` and ``weight_decay * weight-decay scale`` (muP's 1 / width_mult
    on the hidden matrices); None: they join ``adamw_decay``.
    """
    rest = parameter_groups(model, exclude=owned)
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
    return Part("adamw", torch.optim.AdamW(groups, lr=lr, betas=betas)) if groups else None


class HybridOptimizer(torch.optim.Optimizer):
    r"""A list of parts (``Part``) with disjoint parameters, AdamW on the rest: one ``step()``,
    one ``state_dict()``, one list of ``param_groups``.

    .. math:: \theta_P \leftarrow \theta_P - \mathrm{lr}_P\, P(\nabla_{\theta_P} L), \qquad
              \theta_{\text{rest}} \leftarrow \mathrm{AdamW}(\nabla_{\theta_{\text{rest}}} L)

    Args:
        model: the model whose trainable parameters are optimized, all of them (with
            ``train_rest``); None with ``train_rest=False`` (a standalone ``KFAC`` or ``QNG``).
        parts: ``Part``s, or ``(name, preconditioner, lr)`` / ``(name, preconditioner, lr, group
            options)`` for a preconditioner with an SGD step (``preconditioned_sgd``); each owns
            disjoint parameters. Their groups come first in ``param_groups``, in this order.
        lr: AdamW's learning rate for the parameters no part owns.
        weight_decay: AdamW decay on matrices of the rest (not biases, norms, angles).
        betas: AdamW's betas.
        momentum: SGD momentum of the preconditioned parts given as tuples without their own.
        train_rest: put AdamW on every trainable parameter of ``model`` no part owns (the part ``adamw``).
        hidden: muP's group of AdamW, see ``adamw_rest``.

    Raises:
        ValueError: tied weights, a parameter owned twice (the message names it), a part owning a
            tensor that is not a trainable parameter of ``model``, or nothing to train.
    """

    def __init__(
        self,
        model: nn.Module | None,
        parts: list[Part | tuple] = (),
        *,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum: float = 0.0,
        train_rest: bool = True,
        hidden: tuple[list[nn.Parameter], float, float] | None = None,
    ):
        self.parts = [p if isinstance(p, Part) else _sgd_part(p, momentum) for p in parts]
        trainable = trainable_parameters(model) if model is not None else {}
        owner: dict[int, str] = {}
        for part in self.parts:
            for p in part.params:
                if model is not None and id(p) not in trainable:
                    raise ValueError(f"part {part.name!r} owns a tensor that is not a model parameter")
                if id(p) in owner:
                    name = trainable[id(p)][0] if id(p) in trainable else f"a tensor of shape {tuple(p.shape)}"
                    raise ValueError(f"parameter {name!r} is owned by both {owner[id(p)]!r} and {part.name!r}")
                owner[id(p)] = part.name
        if len({part.name for part in self.parts}) != len(self.parts):
            raise ValueError(f"two parts share a name: {[part.name for part in self.parts]}; name each once")
        rest = adamw_rest(model, set(owner), lr, weight_decay, betas, hidden) if train_rest else None
        self.parts += [rest] if rest else []
        params = [p for part in self.parts for p in part.params]
        if not params:
            raise ValueError("the optimizer has no parameters to train: the model has no trainable parameter")
        super().__init__(params, {"lr": lr})
        self._share_param_groups()

    @property
    def preconditioners(self) -> dict[str, Preconditioner]:
        """``{part name: preconditioner}`` of the parts that have one, in part order."""
        return {part.name: part.preconditioner for part in self.parts if part.preconditioner is not None}

    @property
    def adamw(self) -> torch.optim.AdamW | None:
        """The AdamW of the ``adamw`` part (every parameter no row owns), or None without one."""
        return next((part.optimizer for part in self.parts if part.name == "adamw"), None)

    def part(self, name: str) -> Part:
        """The part called ``name`` (a row's name, or ``adamw``)."""
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f"no part {name!r}; parts: {', '.join(part.name for part in self.parts)}")

    def _share_param_groups(self) -> None:
        # The very dicts of the parts' optimizers, so that LR schedulers driving
        # ``self.param_groups`` drive them. Their load_state_dict builds new dicts: call again.
        self.param_groups = [g for part in self.parts for g in part.optimizer.param_groups]

    def before_backward(self, logits: torch.Tensor) -> None:
        """Every preconditioner's ``before_backward(logits)``: training loops call it between the
        forward pass and ``loss.backward()`` (K-FAC with ``fisher="mc"`` backpropagates sampled labels)."""
        for preconditioner in self.preconditioners.values():
            preconditioner.before_backward(logits)

    @torch.no_grad()
    def step(self, closure=None):
        """Every preconditioner rewrites its gradients, then every part's optimizer steps."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            if part.preconditioner is not None:
                part.preconditioner.precondition(lr=part.optimizer.param_groups[0]["lr"])
        for part in self.parts:
            part.optimizer.step()
        return loss

    def stats(self) -> dict[str, float]:
        """What the preconditioners report, merged (e.g. ``metric_cond``)."""
        return {k: v for pc in self.preconditioners.values() for k, v in pc.stats().items()}

    def state_dict(self) -> dict[str, Any]:
        """``{"optimizers": {part: torch state}, "preconditioners": {part: its state}}``."""
        return {
            "optimizers": {part.name: part.optimizer.state_dict() for part in self.parts},
            "preconditioners": {name: pc.state_dict() for name, pc in self.preconditioners.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a ``state_dict()``, or one of the layouts earlier versions saved (``_from_legacy``).

        Raises:
            ValueError: the state has other parts or preconditioners than this optimizer.
        """
        state = state if "optimizers" in state else _from_legacy(state, self.parts)
        names = [part.name for part in self.parts]
        if set(state["preconditioners"]) != set(self.preconditioners):
            raise ValueError(
                f"state has preconditioners {sorted(state['preconditioners'])}, "
                f"this optimizer has {sorted(self.preconditioners)}"
            )
        if set(state["optimizers"]) != set(names):
            raise ValueError(f"state has the parts {sorted(state['optimizers'])}, this optimizer {sorted(names)}")
        for name, pc in self.preconditioners.items():  # first: their errors name what does not fit
            pc.load_state_dict(state["preconditioners"][name])
        for part in self.parts:
            part.optimizer.load_state_dict(state["optimizers"][part.name])
        self._share_param_groups()


def _sgd_part(row: tuple, momentum: float) -> Part:
    name, preconditioner, lr, *options = row
    return preconditioned_sgd(name, preconditioner, lr, **{"momentum": momentum, **(options[0] if options else {})})


def _from_legacy(state: dict[str, Any], parts: list[Part]) -> dict[str, Any]:
    """The state layouts of checkpoints written before optimizers were lists of parts, in today's.

    - ``HybridOptimizer``: ``{"sgd": one SGD over every preconditioner's group (named after it),
      "muon": ..., "adamw": ..., "preconditioners": {...}}``; ``sgd`` or ``adamw`` None when absent.
    - ``KFAC``, ``QNG``, ... alone: the SGD's ``{"state", "param_groups"}`` beside ``{name: preconditioner state}``.

    An SGD group becomes its part's optimizer state as it is: ``torch.optim.Optimizer.load_state_dict``
    maps saved parameter indices to parameters by position, whatever their numbers.
    """
    if "param_groups" in state:  # a standalone preconditioned SGD
        (name,) = [part.name for part in parts]
        return {"optimizers": {name: {"state": state["state"], "param_groups": state["param_groups"]}},
                "preconditioners": {name: state[name]}}  # fmt: skip
    optimizers = {key: state[key] for key in ("muon", "adamw") if state.get(key) is not None}
    sgd = state.get("sgd")
    for group in sgd["param_groups"] if sgd else []:
        held = {i: sgd["state"][i] for i in group["params"] if i in sgd["state"]}
        optimizers[group["name"]] = {"state": held, "param_groups": [group]}
    return {"optimizers": optimizers, "preconditioners": state.get("preconditioners", {})}
