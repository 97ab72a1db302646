"""Muon on the hidden matrices: a stock ``torch.optim.Muon`` part (Jordan et al. 2024).

    part = build_muon(model, cfg.muon, weight_decay=0.01)   # Part("muon", torch.optim.Muon(blocks' matrices))

No preconditioner: Muon's orthogonalized update is its own step, so its part is the torch
optimizer alone, beside the preconditioned parts and AdamW on the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hybrid.errors import check_choice, check_number
from hybrid.optim.linear_layers import kfac_layers
from hybrid.optim.optimizer import Part


@dataclass
class MuonSettings:
    """``[optim.muon]``: ``torch.optim.Muon`` on the hidden 2-D matrices (Jordan et al. 2024)."""

    lr: float = 0.0142  # Muon's learning rate, in AdamW's units (match_rms_adamw); tuned (configs/muon.toml)
    momentum: float = 0.82  # Nesterov momentum of the orthogonalized update; tuned (torch's default: 0.95)
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations of the orthogonalization
    adjust_lr_fn: str = "match_rms_adamw"  # match_rms_adamw (Moonshot) or original (Keller Jordan)

    def validate(self, prefix: str = "optim.muon.") -> MuonSettings:
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        check_number(f"{prefix}momentum", self.momentum, low=0, high=1, high_open=True)
        check_number(f"{prefix}ns_steps", self.ns_steps, low=1, integer=True)
        check_choice(f"{prefix}adjust_lr_fn", self.adjust_lr_fn, ("match_rms_adamw", "original"))
        return self


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The hidden 2-D matrices Muon trains, as its authors prescribe: the weights of the linear
    layers inside the model's blocks (K-FAC's layer set), not the embeddings, norms, biases,
    the LM head (``lm_head``) or circuit weights, which stay with AdamW."""
    layers, _ = kfac_layers(model, exclude=["lm_head*"] if hasattr(model, "lm_head") else [], max_dim=10**9)
    return [m.weight for m in layers.values() if m.weight.dim() == 2]


def muon_lr_scale(width_mult: float, adjust_lr_fn: str) -> float:
    """Muon's rate multiplier at ``width_mult`` under mup (``hybrid.optim.registry.mup_scaling``):
    1 for ``original``, 1 / sqrt(width_mult) for ``match_rms_adamw``; 1 at the base width."""
    return 1.0 if adjust_lr_fn == "original" else width_mult**-0.5


def build_muon(model: nn.Module, settings: MuonSettings, weight_decay: float, width_mult: float = 1.0) -> Part:
    """``torch.optim.Muon`` on ``muon_params(model)`` with ``settings`` (validated), decoupled
    ``weight_decay`` and the rate scaled by ``muon_lr_scale(width_mult, ...)``."""
    lr = settings.lr * muon_lr_scale(width_mult, settings.adjust_lr_fn)
    optimizer = torch.optim.Muon([{"params": muon_params(model), "name": "muon"}], lr=lr, momentum=settings.momentum,
                                 nesterov=settings.nesterov, ns_steps=settings.ns_steps,
                                 adjust_lr_fn=settings.adjust_lr_fn, weight_decay=weight_decay)  # fmt: skip
    return Part("muon", optimizer)
