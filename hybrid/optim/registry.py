"""Which optimizer trains which parameters: one row per part, presets over the rows.

Parameters are partitioned by role:

    linear   the classical nn.Linear layers      kfac | eigen_adam | muon | none
    circuit  the weights of every QuantumLayer   qng | metric_adam | none
    rest     everything else (embeddings, norms, biases, what a row leaves out): AdamW

``[optim] name`` is a preset that fills both roles (``PRESETS``); ``[optim] linear`` and
``[optim] circuit`` override a role. A row of ``ROWS`` is one part of the optimizer
(``hybrid.optim.optimizer.Part``): its role, the settings dataclass of its ``[optim.<row>]``
section (``OptimConfig`` gets one field per row, made from ``ROWS``), how it builds its part
(a preconditioner with an SGD step, or a stock torch optimizer such as Muon), and the search
space ``hybrid tune`` draws its settings from. A new preconditioner is one module plus one
row; a stock torch optimizer is one row (plus its settings dataclass, if it has settings).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from hybrid.errors import InputError, check_choice, check_number
from hybrid.models import HybridGPT, QuantumProjection
from hybrid.optim.eigen_adam import EigenAdamPreconditioner, EigenAdamSettings
from hybrid.optim.kfac import KFACPreconditioner, KFACSettings
from hybrid.optim.metric_adam import MetricAdamPreconditioner, MetricAdamSettings
from hybrid.optim.muon import MuonSettings, build_muon
from hybrid.optim.muon import muon_params as muon_params  # where benchmarks/bench_soap.py finds it
from hybrid.optim.optimizer import HybridOptimizer, Part, preconditioned_sgd, trainable_parameters
from hybrid.optim.qng import QNGPreconditioner, QNGSettings
from hybrid.quantum import QuantumLayer

# -- the rows: (model, cfg, width_mult or None off muP) -> Part, from settings validated before ------------


def _angle_layers(model: nn.Module) -> list[str]:
    return [f"{n}.to_angles" for n, m in model.named_modules() if isinstance(m, QuantumProjection)]


def kfac_part(model: nn.Module, cfg: OptimConfig, width_mult: float | None = None) -> Part:
    """K-FAC on ``model``'s linear layers with ``cfg.kfac``, an SGD step at ``cfg.kfac.lr``.

    Unless ``cfg.kfac.to_angles``, the ``to_angles`` layer of every ``QuantumProjection`` is
    left to AdamW: natural-gradient steps there drive ``pi * tanh`` into saturation, where its
    gradient vanishes, the Fisher shrinks and the next steps grow (in tuning runs of the
    default model, training stalled at the unigram loss). Under muP (a ``HybridGPT``) the
    readouts' damping is damping / width_mult, the rest stays put (``mup_width`` says why)."""
    angles = _angle_layers(model)
    exclude = [] if cfg.kfac.to_angles else angles
    scales = {}
    if width_mult is not None:
        readouts = [*angles, *(["lm_head"] if isinstance(model.lm_head, nn.Linear) else [])]
        scales = {name: 1 / width_mult for name in readouts}
    pc = KFACPreconditioner(model, cfg.kfac, exclude=exclude, damping_scales=scales)
    return preconditioned_sgd("kfac", pc, cfg.kfac.lr, momentum=cfg.kfac.momentum)


def eigen_adam_part(model: nn.Module, cfg: OptimConfig, width_mult: float | None = None) -> Part:
    """Adam in K-FAC's eigenbasis (``hybrid.optim.eigen_adam``) on the linear layers; the SGD
    step applies its direction as is (momentum 0) at ``cfg.eigen_adam.lr``; under muP the hidden
    matrices' rate and decay scale as AdamW's (``mup_width``)."""
    exclude = [] if cfg.eigen_adam.to_angles else _angle_layers(model)
    scales = {}
    if width_mult is not None:
        hidden = {id(w) for w in model.hidden_matrices()}
        scales = {name: (1 / width_mult, decay_scale(cfg, width_mult)) for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and id(m.weight) in hidden}  # fmt: skip
    pc = EigenAdamPreconditioner(model, cfg.eigen_adam, exclude=exclude, scales=scales)
    return preconditioned_sgd("eigen_adam", pc, cfg.eigen_adam.lr, momentum=0.0)


def trainable_circuits(model: nn.Module) -> list[QuantumLayer]:
    """The ``QuantumLayer`` modules whose weights train (``circuit.trainable=false`` freezes them)."""
    return [m for m in model.modules() if isinstance(m, QuantumLayer) and m.weights.requires_grad]


def qng_part(model: nn.Module, cfg: OptimConfig, width_mult: float | None = None) -> Part:
    """QNG on the weights of every trainable ``QuantumLayer`` (one metric block each) with ``cfg.qng``."""
    pc = QNGPreconditioner(trainable_circuits(model), cfg.qng, model=model)
    return preconditioned_sgd("qng", pc, cfg.qng.lr, momentum=cfg.qng.momentum)


def metric_adam_part(model: nn.Module, cfg: OptimConfig, width_mult: float | None = None) -> Part:
    """Adam in the eigenbasis of each circuit's metric (``hybrid.optim.metric_adam``)."""
    pc = MetricAdamPreconditioner(trainable_circuits(model), cfg.metric_adam)
    return preconditioned_sgd("metric_adam", pc, cfg.metric_adam.lr, momentum=0.0)


def muon_part(model: nn.Module, cfg: OptimConfig, width_mult: float | None = None) -> Part:
    """``torch.optim.Muon`` on the blocks' matrices (``muon_params``) with ``cfg.muon``, AdamW's
    decay (scaled as AdamW's hidden matrices under mup) and muP's rate (``mup_scaling``)."""
    decay = cfg.weight_decay * decay_scale(cfg, width_mult)
    return build_muon(model, cfg.muon, decay, 1.0 if width_mult is None else width_mult)


@dataclass(frozen=True)
class Row:
    role: str  # "linear" or "circuit"
    settings: type | None  # the dataclass of its [optim.<row name>] section (with validate()); None: no settings
    build: Callable  # (model, cfg: OptimConfig, width_mult: float | None) -> Part named after the row
    space: dict[str, tuple[float, float, bool]]  # hybrid tune: key -> (low, high, log scale)


# The spaces were widened after the first protocol studies flagged their edges (muon.lr, lr, beta2,
# eigen_adam lr and weight decay, qng damping: benchmarks/results/protocol/*/best.md). A row's key
# replaces AdamW's: under Muon, AdamW trains only the embeddings, norms, biases and readouts, whose
# best rate round 2 put at the top of AdamW's range (0.022 of 0.03, both workloads), so it reaches 0.1.
# Round 2's flags widened the rest: Muon's momentum (0.97 of 0.98, both workloads) and decay (0.071 of
# 0.1, shakespeare); K-FAC's damping and KL clip (hybrid, shakespeare: 0.067 of 0.1, 0.084 of 0.1) and
# decay (0.001 of 0.001, kfac, both); QNG's rate (2.3 of 3, hybrid; 0.015 of 0.01, the shakespeare QNG
# arm) and damping (0.72 of 1, eigen_hybrid);
# eigen-Adam's beta2 and AdamW's rate under it (0.908 of 0.9, 0.0011 of 0.001: eigen_hybrid, markov).
# The widened round on shakespeare flagged Muon's rate (0.087 of 0.1) and AdamW's beta2 under it
# (0.90 of 0.9): both widened again, to 0.3 and from 0.8.
# A study finished on the narrower space stands as it was searched (hybrid.tune.searched_space).
ROWS: dict[str, Row] = {
    "kfac": Row("linear", KFACSettings, kfac_part, {
        "optim.kfac.lr": (0.1, 3.0, True), "optim.kfac.damping": (1e-3, 1.0, True),
        "optim.kfac.momentum": (0.0, 0.95, False), "optim.kfac.kl_clip": (3e-3, 1.0, True),
        "optim.weight_decay": (1e-4, 3e-1, True),
    }),
    "eigen_adam": Row("linear", EigenAdamSettings, eigen_adam_part, {
        "optim.eigen_adam.lr": (1e-3, 3e-2, True), "optim.eigen_adam.beta2": (0.8, 0.999, False),
        "optim.eigen_adam.weight_decay": (1e-4, 1e-1, True), "optim.lr": (1e-4, 1e-1, True),
    }),
    "muon": Row("linear", MuonSettings, muon_part, {
        "optim.muon.lr": (3e-3, 3e-1, True), "optim.muon.momentum": (0.8, 0.995, False),
        "optim.lr": (1e-3, 1e-1, True), "optim.beta2": (0.8, 0.999, False), "optim.weight_decay": (1e-3, 3e-1, True),
    }),
    "qng": Row("circuit", QNGSettings, qng_part, {
        "optim.qng.lr": (1e-3, 10.0, True), "optim.qng.damping": (1e-4, 10.0, True),
        "optim.qng.momentum": (0.0, 0.9, False),
    }),
    "metric_adam": Row("circuit", MetricAdamSettings, metric_adam_part, {
        "optim.metric_adam.lr": (1e-3, 1e-1, True),
    }),
}  # fmt: skip


@dataclass
class _OptimKeys:
    """The keys of ``[optim]`` itself; ``OptimConfig`` adds one section per row of ``ROWS``."""

    name: str = "muon"  # a preset of PRESETS, the tuned comparison's winner; also hybrid, kfac, qng, adamw, ...
    linear: str = ""  # override the preset's optimizer of the nn.Linear layers: kfac, eigen_adam, muon or none
    circuit: str = ""  # override the preset's optimizer of the circuit weights: qng, metric_adam or none
    lr: float = 3e-3  # peak AdamW learning rate after warmup (every lr follows the same schedule)
    weight_decay: float = 0.01  # AdamW (and Muon) decay on matrices (not on biases, norms, circuit angles)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    warmup_steps: int = 20  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    weight_decay_scaling: str = "none"  # model.parametrization=mup: "inverse_width" decays hidden matrices / width_mult

    def roles(self) -> dict[str, str]:
        """``{"linear": row name or "none", "circuit": ...}`` after the overrides."""
        linear, circuit = PRESETS[self.name]
        return {"linear": self.linear or linear, "circuit": self.circuit or circuit}

    def validate(self, prefix: str = "optim.") -> OptimConfig:
        """Every key, then every row's section (in use or not). Raises InputError naming the key."""
        check_choice(f"{prefix}name", self.name, PRESETS)
        for role in ("linear", "circuit"):
            choices = ["", "none", *(name for name, row in ROWS.items() if row.role == role)]
            check_choice(f"{prefix}{role}", getattr(self, role), choices)
        check_number(f"{prefix}lr", self.lr, low=0, low_open=True)
        check_number(f"{prefix}weight_decay", self.weight_decay, low=0)
        check_number(f"{prefix}beta1", self.beta1, low=0, high=1, high_open=True)
        check_number(f"{prefix}beta2", self.beta2, low=0, high=1, high_open=True)
        check_number(f"{prefix}grad_clip", self.grad_clip, low=0)
        check_number(f"{prefix}warmup_steps", self.warmup_steps, low=0, integer=True)
        check_number(f"{prefix}min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_choice(f"{prefix}weight_decay_scaling", self.weight_decay_scaling, ("none", "inverse_width"))
        for name in sections():
            getattr(self, name).validate(prefix=f"{prefix}{name}.")
        return self


def sections() -> list[str]:
    """The ``[optim.<row>]`` sections: the rows that have settings, in ``ROWS`` order."""
    return [name for name, row in ROWS.items() if row.settings is not None]


OptimConfig = dataclasses.make_dataclass(
    "OptimConfig", [(name, ROWS[name].settings, field(default_factory=ROWS[name].settings)) for name in sections()],
    bases=(_OptimKeys,),
)  # fmt: skip
OptimConfig.__module__ = __name__
OptimConfig.__doc__ = """``[optim]``: the preset, AdamW on the rest, the schedule, and one section per row of ``ROWS``
(``[optim.kfac]``: ``KFACSettings``, ``[optim.muon]``: ``MuonSettings``, ...)."""

ADAMW_SPACE = {"optim.lr": (1e-3, 3e-2, True), "optim.beta2": (0.9, 0.999, False),
               "optim.weight_decay": (1e-3, 1e-1, True)}  # fmt: skip

PRESETS: dict[str, tuple[str, str]] = {  # name -> (linear, circuit)
    "hybrid": ("kfac", "qng"),
    "kfac": ("kfac", "none"),
    "qng": ("none", "qng"),
    "adamw": ("none", "none"),
    "muon": ("muon", "none"),
    "muon_qng": ("muon", "qng"),
    "eigen_adam": ("eigen_adam", "none"),
    "eigen_hybrid": ("eigen_adam", "qng"),
    "muon_metric_adam": ("muon", "metric_adam"),
}
OPTIMIZERS = tuple(PRESETS)


def search_space(cfg: OptimConfig) -> dict[str, tuple[float, float, bool]]:
    """The keys ``hybrid tune`` searches for ``cfg``'s roles: AdamW's plus each row's (a row's
    bounds of an AdamW key replace AdamW's)."""
    space = dict(ADAMW_SPACE)
    for name in cfg.roles().values():
        if name != "none":
            space.update(ROWS[name].space)
    return space


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, validated: bool = False) -> HybridOptimizer:
    """The optimizer ``cfg`` asks for, over every trainable parameter of ``model``: one part per
    role's row (``ROWS``), AdamW on the rest.

    ``hybrid`` (the default): K-FAC on the classical ``nn.Linear`` layers (SGD step at
    ``cfg.kfac.lr``), quantum natural gradient on the weights of every ``QuantumLayer`` (one
    metric block each, SGD step at ``cfg.qng.lr``), AdamW on the rest (embeddings, norms,
    biases of excluded layers). A model without circuits gets K-FAC + AdamW.
    ``kfac``: K-FAC on the ``nn.Linear`` layers, AdamW on the rest, circuit weights included.
    ``qng``: quantum natural gradient on the circuit weights, AdamW on the rest.
    ``muon``: ``torch.optim.Muon`` on the blocks' matrices, AdamW on the rest.
    ``muon_qng``: Muon, QNG on the circuit weights, AdamW on the rest.
    ``eigen_adam``: Adam in K-FAC's eigenbasis on the linear layers (SOAP/EKFAC-style), AdamW on the rest.
    ``eigen_hybrid``: ``eigen_adam`` plus QNG on the circuit weights.
    ``muon_metric_adam``: Muon, Adam in the eigenbasis of each circuit's metric, AdamW on the rest.
    ``adamw``: AdamW on everything.

    ``param_groups`` hold the preconditioned parts' groups first, then the stock optimizers',
    then AdamW's (the order of the optimizers before parts; ``metrics.csv``'s ``lr`` is the first's).

    Args:
        validated: ``cfg`` was checked already (``hybrid.config.validate`` before a run); else
            it is checked here.

    Raises:
        InputError: a setting out of range, or QNG asked for a model without circuits.
    """
    if not validated:
        cfg.validate()
    trainable_parameters(model)  # tied weights: one clear error before any hook is placed
    roles = cfg.roles()
    has_circuit = bool(trainable_circuits(model))
    if roles["circuit"] != "none" and not has_circuit:
        if cfg.circuit or cfg.name == "qng":
            raise InputError(f"optimizer {roles['circuit']} needs a circuit in the model; "
                             "use --quantum head, ffn or attn, or another --optimizer")  # fmt: skip
        roles["circuit"] = "none"  # hybrid on a classical (or frozen-circuit) model: K-FAC + AdamW
    width_mult = mup_width(model, cfg)
    parts = [ROWS[name].build(model, cfg, width_mult) for name in roles.values() if name != "none"]
    parts.sort(key=lambda part: part.preconditioner is None)  # preconditioned first, as before parts
    hidden = None
    if width_mult is not None:  # muP: AdamW's hidden matrices (those no row owns) at lr / width_mult
        owned = {id(p) for part in parts for p in part.params}
        hidden = ([p for p in model.hidden_matrices() if id(p) not in owned], 1 / width_mult,
                  decay_scale(cfg, width_mult))  # fmt: skip
    return HybridOptimizer(model, parts, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                           hidden=hidden)  # fmt: skip


def mup_width(model: nn.Module, cfg: OptimConfig) -> float | None:
    """``width_mult`` of a ``model.parametrization = "mup"`` model, else None.

    The rules per row (Yang et al. 2022, Tensor Programs V, Table 3; the model holds the init and
    the readout multipliers):
    - AdamW: the hidden matrices (``HybridGPT.hidden_matrices``) at lr / width_mult, every other
      parameter (embeddings, readouts after their 1 / width_mult multiplier, biases, norms) at lr;
      with ``weight_decay_scaling = "inverse_width"`` their decay is also / width_mult (``decay_scale``).
    - Muon (``muon_lr_scale``): muP's spectral condition asks a hidden matrix's update for an
      operator norm of order sqrt(fan_out / fan_in), constant across widths here (every hidden
      matrix keeps its aspect ratio). The orthogonalised update has operator norm 1; ``original``
      scales it by sqrt(max(1, fan_out / fan_in)), a shape constant, so its rate stays put;
      ``match_rms_adamw`` scales it by 0.2 sqrt(max(fan_out, fan_in)), which grows as
      sqrt(width_mult), so its rate goes as 1 / sqrt(width_mult). (Not AdamW's 1 / width_mult:
      AdamW's update of a hidden matrix is nearly low-rank, the orthogonalised one full-rank.)
    - QNG and metric_adam: the circuit keeps its size under mup (only classical widths scale), and
      its inputs are angles from a readout already scaled by the model: no change.
    - eigen_adam: AdamW's rule, hidden matrices at lr / width_mult (and their decay by
      ``decay_scale``), the rest at lr. Its step is Adam's direction in the orthogonal eigenbasis
      of K-FAC's factors, rotated back: the rotations keep the update's Frobenius norm and, once
      the moments are in the basis, its entries of Adam's order, so Adam's per-entry muP
      rate carries over (the rule Qiu et al. 2025, arXiv 2512.05620, take for SOAP, Adam in
      Shampoo's eigenbasis). Before the first basis the step is AdamW's, exactly.
    - K-FAC (``kfac_part``): the rate stays put, and so does the damping, but for the readouts'
      (``lm_head``, ``to_angles``), which is damping / width_mult. Ishikawa and Karakida 2023
      (arXiv 2312.12226) derive K-FAC's muP: the model's init and readouts, a width-independent
      rate, a damping that keeps its ratio to the curvature. The step
      ``(G (x) A + damping I)^-1 grad`` acts on the span of the batch's ``g (x) x``, where the
      eigenvalues of ``G (x) A`` are of order ``|g|^2 |x|^2`` per token. In a hidden layer under
      this muP, ``|x|^2`` grows as the width (entries of order 1) and ``|g|^2`` falls as 1 / width,
      so those eigenvalues keep their size and the damping (in units of one loss term's Fisher)
      its ratio to them; ``lm_head`` reads ``x`` after its 1 / width_mult multiplier (``|x|^2`` as
      1 / width) into logits whose gradients keep their size, so its eigenvalues fall as
      1 / width_mult and its damping follows (``to_angles``, whose input carries the same
      multiplier, takes the same rule; it is left to AdamW unless ``kfac.to_angles``, and not
      measured). The Cholesky block's ``pi``-split damping keeps the
      same ratios. The mean eigenvalue ``tr(G)/d_out * tr(A)/d_in`` falls as 1 / width_mult**2 in
      every layer (measured, widths 32 to 512), but only through the directions the gradient has
      no part in: damping rescaled by it spreads the attention outputs 34x over those widths in
      the coordinate check; constant damping 2.8x with the logits falling 1.6x; with the readout
      rule 2.4x and 1.2x (standard: 39x, the logits 4.7x). The KL clip, a bound in function
      space, stays put. ``graft`` and ``adam_steps`` take AdamW's step length instead, whose muP
      rate differs per layer: refused with one line.

    Raises:
        InputError: mup with K-FAC's graft or adam_steps, or weight_decay_scaling without mup.
    """
    mup = isinstance(model, HybridGPT) and model.cfg.parametrization == "mup"
    check_mup(model.cfg.parametrization if mup else "standard", cfg)
    return model.cfg.width_mult if mup else None


def decay_scale(cfg: OptimConfig, width_mult: float | None) -> float:
    """The multiplier of ``cfg.weight_decay`` on hidden matrices: 1 / width_mult with
    ``weight_decay_scaling = "inverse_width"`` under mup (``width_mult`` not None), else 1."""
    return 1 / width_mult if width_mult is not None and cfg.weight_decay_scaling == "inverse_width" else 1.0


def check_mup(parametrization: str, cfg: OptimConfig) -> None:
    """The optimizer settings ``parametrization`` cannot take (``validate(cfg)`` and ``build_optimizer``).

    Raises:
        InputError: mup with K-FAC's graft or adam_steps, or weight_decay_scaling without mup.
    """
    if parametrization != "mup" and cfg.weight_decay_scaling != "none":
        raise InputError("optim.weight_decay_scaling=inverse_width scales with the width under "
                         "model.parametrization=mup only; set it, or weight_decay_scaling=none")  # fmt: skip
    if parametrization == "mup" and cfg.roles()["linear"] == "kfac" and (cfg.kfac.graft or cfg.kfac.adam_steps):
        raise InputError("model.parametrization=mup scales K-FAC's damping, not the AdamW step length that "
                         "optim.kfac.graft and optim.kfac.adam_steps borrow; set them to false and 0, or "
                         "model.parametrization=standard")  # fmt: skip


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warmup, then cosine decay
    to ``cfg.min_lr_ratio`` at ``total_steps``. Drives ``torch.optim.lr_scheduler.LambdaLR``."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
