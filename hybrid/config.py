"""Typed configuration: dataclasses with commented defaults, one TOML file, flat overrides.

    cfg = load_config("run.toml")                                  # or Config() for the defaults
    cfg = apply_overrides(cfg, {"train.steps": "60", "model.quantum": "none"})
    save_config(cfg, run_dir / "config.toml")                      # every run folder has one

Unknown sections or keys and values of the wrong type are ``InputError``s that name the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from hybrid.errors import InputError


@dataclass
class ModelConfig:
    block_size: int = 32  # context length in characters
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 64  # width of the residual stream
    dropout: float = 0.0  # 0 keeps runs bit-for-bit reproducible
    quantum: str = "head"  # where circuits go: head (LM head), ffn (last block's MLP), none


@dataclass
class CircuitConfig:
    name: str = "strongly_entangling"  # a template in circuits.TEMPLATES
    n_qubits: int = 4  # also the number of angles the model feeds each circuit
    n_layers: int = 2  # variational layers of the template
    measure: str = "all"  # observables: Z (one per qubit), ZZ (+ neighbour pairs), all (2^n - 1 Z strings)
    backend: str = "default.qubit"  # see hybrid.backends.BACKENDS
    shots: int = 0  # 0: exact on simulators, 1024 on sampling backends (qiskit.aer, fake_*, ibm_*); > 0: sampled there
    noise: str = ""  # qiskit.aer only: an IBM fake device whose noise model to use, e.g. fake_manila
    # Execution of qiskit.aer, fake_* and ibm_* backends (hybrid.ibm); see README "IBM Quantum hardware".
    mode: str = "job"  # job, batch or session (one dedicated QPU window for the whole run)
    resilience_level: int = 1  # EstimatorV2 error mitigation on hardware: 0 none, 1 readout (TREX), 2 + ZNE
    twirling: bool = False  # Pauli twirling of gates and measurements, on hardware
    dd: str = ""  # dynamical decoupling of idle qubits on hardware: "" off, XX, XpXm or XY4
    optimization_level: int = 1  # preset pass manager level; circuits are transpiled once per run
    max_execution_time: int = 0  # QPU seconds one job may use; 0: the service's default (cap 10800)
    result_timeout: float = 3600.0  # seconds to wait for one job; the journal keeps it for --resume


@dataclass
class DataConfig:
    path: str = ""  # a UTF-8 text file; "" uses the built-in corpus (hybrid.corpus)
    corpus_chars: int = 150_000  # size of the built-in corpus in characters
    val_fraction: float = 0.1  # the last part of the text, held out for validation


@dataclass
class OptimConfig:
    name: str = "hybrid"  # hybrid (K-FAC + QNG + AdamW), kfac, qng or adamw; see hybrid.optim.build_optimizer
    lr: float = 3e-3  # peak learning rate after warmup
    weight_decay: float = 0.01  # AdamW decay on matrices (not on biases, norms, circuit angles)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    warmup_steps: int = 20  # linear warmup, then cosine decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1
    # K-FAC (hybrid.optim.kfac); damping is in units of the Fisher of one loss term (one token)
    kfac_lr: float = 1.0  # peak SGD learning rate of the K-FAC layers (the schedule scales it like lr)
    momentum: float = 0.0  # SGD momentum of the preconditioned (K-FAC and QNG) groups
    kfac_damping: float = 1e-2  # lambda in (G (x) A + lambda I)^-1; must be > 0 (1e-3 stalls here at the unigram loss)
    kfac_curvature_every: int = 10  # steps between factor updates (hooks are idle in between)
    kfac_inverse_every: int = 10  # steps between decompositions of the factors (50 leaves stale inverses early on)
    curvature_ema: float = 0.95  # weight of the old factors in their running average
    kfac_approx: str = "expand"  # expand (every token a sample) or reduce (sum over the sequence first)
    fisher: str = "empirical"  # empirical (training gradients) or mc (one extra backward with sampled labels)
    kl_clip: float = 3e-2  # bound on s^T (F + damping) s (about 2 KL) of each K-FAC step s; 0 disables
    kfac_inverse: str = "eigh"  # eigh (exact damping) or cholesky (factored damping, cheaper on big factors)
    kfac_exclude: str = ""  # comma-separated module names or fnmatch patterns left to AdamW, e.g. lm_head
    kfac_max_dim: int = 2048  # layers with a wider factor (a large-vocabulary head) are left to AdamW
    kfac_to_angles: bool = False  # K-FAC on the to_angles layer before a circuit's pi*tanh; off: AdamW trains it
    # QNG (hybrid.optim.qng)
    qng_lr: float = 0.1  # qng: peak learning rate of the circuit weights (the schedule scales it like lr)
    qng_damping: float = 1e-3  # qng: added to the metric's diagonal before the solve (PennyLane's lam)
    qng_approx: str = "block-diag"  # qng: metric approximation: diag, block-diag or full
    qng_curvature_every: int = 1  # qng: steps between metric refreshes; the metric is reused in between
    qng_metric_samples: int = 64  # qng: circuit inputs of the latest batch the metric is averaged over


@dataclass
class TrainConfig:
    steps: int = 1500  # optimizer steps (the default run takes about a minute on 2 cores)
    batch_size: int = 32  # sequences per step; a step runs batch_size * block_size circuits
    eval_every: int = 100  # steps between evaluations, metrics rows and checkpoints
    eval_batches: int = 8  # fixed batches per split for each evaluation
    seed: int = 0  # seeds initialization, batch order and sampling
    device: str = "cpu"  # cpu or cuda
    sample_chars: int = 300  # characters generated into sample.txt at the end
    diagnostics_every: int = 0  # steps between curvature spectra (hybrid.diagnostics.track, diagnostics.csv); 0: off


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a ``Config`` from nested ``{section: {key: value}}``; missing keys keep defaults."""
    cfg = Config()
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for section, values in data.items():
        if section not in sections:
            raise InputError(f"unknown config section [{section}] in {source}; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise InputError(f"[{section}] in {source} must be a table of keys, got {values!r}")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value, source)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a TOML config file (see ``Config`` for the sections and keys)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}; pass an existing TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None
    return config_from_dict(data, source=str(path))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as TOML."""
    Path(path).write_text(tomli_w.dumps(cfg.to_dict()), encoding="utf-8")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Return a copy of ``cfg`` with ``{"section.key": value}`` applied.

    String values are parsed by the field's type (``"60"`` for an int field), so command-line
    text and typed values both work.
    """
    cfg = config_from_dict(cfg.to_dict())
    for dotted, value in overrides.items():
        _set(cfg, dotted, value, "overrides")
    return cfg


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    section, _, key = dotted.partition(".")
    sub = getattr(cfg, section, None)
    if sub is None or not dataclasses.is_dataclass(sub):
        raise InputError(f"unknown config section {section!r} in {source} (from {dotted!r})")
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if key not in fields:
        raise InputError(f"unknown config key {dotted!r} in {source}; keys of [{section}]: {', '.join(fields)}")
    kind = type(getattr(type(sub)(), key))  # the default's type is the field's type
    setattr(sub, key, _coerce(value, kind, dotted, source))


def _coerce(value: Any, kind: type, dotted: str, source: str) -> Any:
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            if kind is bool:
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return text in ("true", "1", "yes")
            return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            raise InputError(f"{dotted} in {source} must be {kind.__name__}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{dotted} in {source} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


QUANTUM_PLACES = ("head", "ffn", "none")
OPTIMIZERS = ("hybrid", "kfac", "qng", "adamw")  # see hybrid.optim.build_optimizer


def validate(cfg: Config) -> Config:
    """Check ranges and choices that need no other module; names of circuits and backends are
    checked where they are resolved. Returns ``cfg`` for chaining."""
    m, c, d, o, t = cfg.model, cfg.circuit, cfg.data, cfg.optim, cfg.train
    positive = {
        "model.block_size": m.block_size, "model.n_layer": m.n_layer, "model.n_head": m.n_head,
        "model.n_embd": m.n_embd, "circuit.n_qubits": c.n_qubits, "circuit.n_layers": c.n_layers,
        "data.corpus_chars": d.corpus_chars, "train.steps": t.steps,
        "train.batch_size": t.batch_size, "train.eval_every": t.eval_every,
        "train.eval_batches": t.eval_batches,
    }  # fmt: skip
    for key, value in positive.items():
        if value < 1:
            raise InputError(f"{key} must be at least 1, got {value}")
    for key, value in {"circuit.shots": c.shots, "train.sample_chars": t.sample_chars,
                       "optim.warmup_steps": o.warmup_steps, "optim.grad_clip": o.grad_clip,
                       "optim.weight_decay": o.weight_decay,
                       "train.diagnostics_every": t.diagnostics_every}.items():  # fmt: skip
        if value < 0:
            raise InputError(f"{key} must be >= 0, got {value}")
    if m.n_embd % m.n_head:
        raise InputError(f"model.n_embd ({m.n_embd}) must be a multiple of model.n_head ({m.n_head})")
    if m.quantum not in QUANTUM_PLACES:
        raise InputError(f"model.quantum must be one of {', '.join(QUANTUM_PLACES)}, got {m.quantum!r}")
    if not 0 < d.val_fraction < 1:
        raise InputError(f"data.val_fraction must lie strictly between 0 and 1, got {d.val_fraction}")
    if not 0 <= m.dropout < 1:
        raise InputError(f"model.dropout must lie in [0, 1), got {m.dropout}")
    if o.lr <= 0:
        raise InputError(f"optim.lr must be > 0, got {o.lr}")
    if o.name not in OPTIMIZERS:
        raise InputError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {o.name!r}")
    if o.name == "qng" and m.quantum == "none":
        raise InputError("optimizer qng needs a circuit in the model; use --quantum head or ffn, or --optimizer adamw")
    if not 0 <= o.min_lr_ratio <= 1:
        raise InputError(f"optim.min_lr_ratio must lie in [0, 1], got {o.min_lr_ratio}")
    if t.device not in ("cpu", "cuda") and not t.device.startswith("cuda:"):
        raise InputError(f"train.device must be cpu, cuda or cuda:N, got {t.device!r}")
    _validate_kfac(o)
    _validate_qng(o)
    return cfg


def _validate_qng(o: OptimConfig) -> None:
    for key, value in {"optim.qng_lr": o.qng_lr, "optim.qng_damping": o.qng_damping,
                       "optim.qng_curvature_every": o.qng_curvature_every,
                       "optim.qng_metric_samples": o.qng_metric_samples}.items():  # fmt: skip
        if value <= 0:
            raise InputError(f"{key} must be > 0, got {value}")
    if o.qng_approx not in ("diag", "block-diag", "full"):
        raise InputError(f"optim.qng_approx must be diag, block-diag or full, got {o.qng_approx!r}")


def _validate_kfac(o: OptimConfig) -> None:
    choices = {"optim.kfac_approx": (o.kfac_approx, ("expand", "reduce")),
               "optim.fisher": (o.fisher, ("empirical", "mc")),
               "optim.kfac_inverse": (o.kfac_inverse, ("eigh", "cholesky"))}  # fmt: skip
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    periods = {"optim.kfac_curvature_every": o.kfac_curvature_every, "optim.kfac_inverse_every": o.kfac_inverse_every,
               "optim.kfac_max_dim": o.kfac_max_dim}  # fmt: skip
    for key, value in periods.items():
        if value < 1:
            raise InputError(f"{key} must be at least 1, got {value}")
    if not (o.kfac_damping > 0 and o.kfac_lr > 0):
        raise InputError(f"optim.kfac_damping and optim.kfac_lr must be > 0, got {o.kfac_damping}, {o.kfac_lr}")
    if not 0 <= o.curvature_ema < 1:
        raise InputError(f"optim.curvature_ema must lie in [0, 1), got {o.curvature_ema}")
    if not 0 <= o.momentum < 1:
        raise InputError(f"optim.momentum must lie in [0, 1), got {o.momentum}")
    if o.kl_clip < 0:
        raise InputError(f"optim.kl_clip must be >= 0 (0 disables the clip), got {o.kl_clip}")
