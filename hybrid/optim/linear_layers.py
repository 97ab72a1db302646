"""Which layers of a model K-FAC (and the preconditioners built on it) take, and why it leaves
the rest out: ``nn.Linear`` and Hugging Face's ``Conv1D`` (GPT-2's projections), whose weight
is stored transposed, (d_in, d_out) with y = x W + b.

    layers, excluded = kfac_layers(model, exclude=["lm_head"], max_dim=2048)
    d_out, d_in = layer_dims(layers["blocks.0.mlp.fc"])
    grad = grad_matrix(layers["blocks.0.mlp.fc"])        # [dW | db] (d_out, d_in + 1), nn.Linear's layout
"""

from __future__ import annotations

import fnmatch
import logging
import sys
from collections.abc import Iterable

import torch
from torch import nn

from hybrid.errors import InputError

logger = logging.getLogger("hybrid.optim.kfac")


def conv1d_class() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` if transformers is loaded, else None (a model that
    holds one has loaded it; K-FAC never imports the optional dependency itself)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_transposed(layer: nn.Module) -> bool:
    """True for a ``Conv1D``: weight (d_in, d_out), y = x W + b."""
    return not isinstance(layer, nn.Linear)


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """``(d_out, d_in)`` of an ``nn.Linear`` or a ``Conv1D``."""
    d0, d1 = layer.weight.shape
    return (d1, d0) if is_transposed(layer) else (d0, d1)


def grad_matrix(layer: nn.Module) -> torch.Tensor | None:
    """The layer's gradient as ``[dW | db]`` (d_out, d_in + bias), W in nn.Linear's layout; None
    when the weight has no gradient."""
    if layer.weight.grad is None:
        return None
    grad = layer.weight.grad.T if is_transposed(layer) else layer.weight.grad  # (d_out, d_in)
    if layer.bias is None:
        return grad
    bias = layer.bias.grad if layer.bias.grad is not None else torch.zeros_like(layer.bias)
    return torch.cat([grad, bias[:, None]], dim=1)  # (d_out, d_in + 1)


def write_grad(layer: nn.Module, update: torch.Tensor) -> None:
    """(d_out, d_a) update -> the layer's ``weight.grad`` (transposed back for a Conv1D) and ``bias.grad``."""
    d_in = layer_dims(layer)[1]
    grad = layer.weight.grad.T if is_transposed(layer) else layer.weight.grad  # (d_out, d_in), a view
    grad.copy_(update[:, :d_in])
    if layer.bias is not None and layer.bias.grad is not None:
        layer.bias.grad.copy_(update[:, d_in])


def kfac_layers(
    model: nn.Module, exclude: Iterable[str] = (), max_dim: int = 2048
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The linear layers K-FAC preconditions, and why the rest of the model is left out.

    Linear layers are ``nn.Linear`` and Hugging Face's ``Conv1D``. Left out:
    frozen weights, projections of ``nn.MultiheadAttention`` (it calls them functionally, so
    hooks never fire), layers whose name or an ancestor's name matches a pattern of
    ``exclude`` (``fnmatch``, e.g. ``"lm_head"`` or ``"blocks.*.attn.query"``), layers with a
    factor wider than ``max_dim`` (a large-vocabulary output layer: its G is vocab x vocab),
    and every other module with trainable parameters of its own (embeddings, norms, circuits,
    layer types K-FAC does not know), which the other optimizers train.

    Returns:
        ``({name: layer}, {name: reason})`` for the preconditioned and the left-out modules
        (the model itself, if it holds parameters directly, is ``""``).

    Raises:
        InputError: a pattern matches no module, no layer is left, or a preconditioned
            weight is tied to another parameter.
    """
    exclude = [p.strip() for p in exclude if p.strip()]
    modules = dict(model.named_modules())
    unmatched = [p for p in exclude if not any(fnmatch.fnmatchcase(name, p) for name in modules)]
    if unmatched:
        raise InputError(
            f"kfac_exclude pattern(s) {unmatched} match no module of the model; "
            f"use module names such as {', '.join(list(modules)[1:4])}"
        )
    mha = [name for name, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    transposed = conv1d_class()
    kinds = (nn.Linear,) if transposed is None else (nn.Linear, transposed)

    layers, skipped = {}, {}
    for name, m in modules.items():
        if not isinstance(m, kinds):
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                skipped[name] = f"{type(m).__name__}: not a linear layer (nn.Linear or Conv1D)"
            continue
        parts = name.split(".")
        ancestors = [".".join(parts[: i + 1]) for i in range(len(parts))]
        d_out, d_in = layer_dims(m)
        if not m.weight.requires_grad:
            skipped[name] = "frozen"
        elif any(a in mha for a in ancestors):
            skipped[name] = "inside nn.MultiheadAttention, which bypasses its forward"
        elif any(fnmatch.fnmatchcase(a, p) for a in ancestors for p in exclude):
            skipped[name] = "excluded by name"
        elif max(d_out, d_in + 1) > max_dim:
            skipped[name] = f"a factor wider than max_dim={max_dim}"
        else:
            own = f"{name}." if name else ""  # the model itself is the layer: its parameters have no prefix
            tied = [n for p in m.parameters() for n in names[id(p)] if not n.startswith(own)]
            if tied:
                raise InputError(
                    f"layer {name!r} shares its parameters with {tied} (tied weights): K-FAC's statistics "
                    f"would be wrong for both; untie them or exclude {name!r} from K-FAC"
                )
            layers[name] = m
    if not layers:
        raise InputError("the model has no nn.Linear layer K-FAC can precondition; use another optimizer")
    return layers, skipped


def report_excluded(kind: str, layers: dict[str, nn.Module], excluded: dict[str, str]) -> str:
    """One INFO line: how many layers ``kind`` preconditions and, grouped by reason, what it
    leaves to the other optimizers (the first 6 names of each reason). Returns the line."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in excluded.items():
        by_reason.setdefault(reason, []).append(name or "(the model itself)")
    parts = [
        f"{', '.join(n[:6])}{f' and {len(n) - 6} more' if len(n) > 6 else ''} ({reason})"
        for reason, n in by_reason.items()
    ]  # fmt: skip
    line = f"{kind} preconditions {len(layers)} layers; left to the other optimizers: {'; '.join(parts) or 'nothing'}"
    logger.info(line)
    return line
