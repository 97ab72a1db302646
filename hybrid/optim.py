"""Optimizers for a hybrid model, and the learning-rate schedule.

Every trainable parameter lands in exactly one group, and ``parameter_groups`` checks it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hybrid.config import OptimConfig
from hybrid.errors import InputError
from hybrid.quantum import QuantumLayer

OPTIMIZERS = ("adamw",)


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split trainable parameters into ``decay`` (linear and embedding matrices) and
    ``no_decay`` (biases, norms, circuit angles).

    Circuit weights are angles: decaying them toward 0 has no meaning, so they never decay.

    Raises:
        ValueError: a parameter tensor is registered under two names (tied weights).
    """
    circuit_weights = {id(m.weights) for m in model.modules() if isinstance(m, QuantumLayer)}
    seen: dict[int, str] = {}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"decay": [], "no_decay": []}
    for name, p in model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        if id(p) in seen:
            raise ValueError(
                f"parameters {seen[id(p)]!r} and {name!r} are the same tensor (tied weights); "
                "untie them so that each parameter has one owner"
            )
        seen[id(p)] = name
        decays = p.dim() >= 2 and id(p) not in circuit_weights
        groups["decay" if decays else "no_decay"].append((name, p))
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``cfg.name`` asks for, over every trainable parameter of ``model``."""
    if cfg.name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {cfg.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups = parameter_groups(model)
    return torch.optim.AdamW(
        [
            {"params": [p for _, p in groups["decay"]], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in groups["no_decay"]], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then cosine decay
    to ``cfg.min_lr_ratio`` at ``total_steps``. Drives ``torch.optim.lr_scheduler.LambdaLR``."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
