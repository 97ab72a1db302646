"""Typed configuration: dataclasses with commented defaults, one TOML file, flat overrides.

    cfg = load_config("run.toml")                                  # or Config() for the defaults
    cfg = apply_overrides(cfg, {"train.steps": "60", "optim.kfac.damping": "1e-2"})
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

from hybrid.backends import ExecutionConfig, get_backend
from hybrid.checkpoint import atomic_write
from hybrid.data import DataConfig
from hybrid.errors import MAX_SEED, InputError, check_number
from hybrid.models import ModelConfig, check_controls
from hybrid.optim.registry import OptimConfig, check_mup
from hybrid.quantum import CircuitConfig
from hybrid.sinks import sink_names


@dataclass
class TrainConfig:
    """``[train]``: the training loop and its run folder."""

    steps: int = 1500  # optimizer steps (the default run takes about a minute on 2 cores)
    batch_size: int = 32  # sequences per step; a step runs batch_size * block_size circuits
    eval_every: int = 100  # steps between evaluations, metrics rows and checkpoints
    eval_batches: int = 8  # fixed batches per split for each evaluation
    seed: int = 0  # seeds initialization, batch order and sampling
    device: str = "cpu"  # cpu or cuda
    sample_chars: int = 300  # characters generated into sample.txt at the end
    test_batches: int = 0  # batches of consecutive test windows scored at the end (test.json); 0: the whole split
    curvature_every: int = 0  # steps between curvature spectra (hybrid.diagnostics.track, diagnostics.csv); 0: off
    log: str = "csv"  # metrics sinks, comma-separated: csv (always on), tensorboard, mlflow (hybrid.sinks.SINKS)

    def validate(self, prefix: str = "train.") -> TrainConfig:
        for key in ("steps", "batch_size", "eval_every", "eval_batches"):
            check_number(f"{prefix}{key}", getattr(self, key), low=1, integer=True)
        for key in ("sample_chars", "curvature_every", "test_batches"):
            check_number(f"{prefix}{key}", getattr(self, key), low=0, integer=True)
        check_number(f"{prefix}seed", self.seed, low=0, high=MAX_SEED, integer=True)
        if self.device not in ("cpu", "cuda") and not (
            self.device.startswith("cuda:") and self.device[5:].isdigit()
        ):
            raise InputError(f"{prefix}device must be cpu, cuda or cuda:N, got {self.device!r}")
        sink_names(self.log, f"{prefix}log")
        return self


@dataclass
class Config:
    """One section per component; each section validates itself (``validate`` runs them all)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


# Keys of run folders written before the sections were split: old -> new (one or more).
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    **{f"circuit.{k}": (f"execution.{k}",) for k in (
        "shots", "noise", "mode", "resilience_level", "twirling", "dd", "optimization_level",
        "max_execution_time", "result_timeout")},
    **{f"optim.kfac_{k}": (f"optim.kfac.{k}",) for k in (
        "lr", "damping", "curvature_every", "inverse_every", "approx", "inverse", "exclude", "max_dim", "to_angles")},
    "optim.curvature_ema": ("optim.kfac.curvature_ema",), "optim.fisher": ("optim.kfac.fisher",),
    "optim.kl_clip": ("optim.kfac.kl_clip",), "optim.momentum": ("optim.kfac.momentum", "optim.qng.momentum"),
    **{f"optim.qng_{k}": (f"optim.qng.{k}",) for k in ("lr", "damping", "approx", "curvature_every", "metric_samples")},
    "optim.qng.qnspsa_step": ("optim.qng.fidelity_step",),
    "train.diagnostics_every": ("train.curvature_every",),
}  # fmt: skip


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a ``Config`` from nested ``{section: {key: value}}`` (``[optim.kfac]`` is
    ``{"optim": {"kfac": {...}}}``); missing keys keep defaults; keys of older run folders
    (``LEGACY_KEYS``) are read under their new names."""
    cfg = Config()
    sections = {f.name for f in dataclasses.fields(cfg)}
    for section, values in data.items():
        if section not in sections:
            raise InputError(f"unknown config section [{section}] in {source}; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise InputError(f"[{section}] in {source} must be a table of keys, got {values!r}")
        for dotted, value in _flatten(values, section):
            _set(cfg, dotted, value, source)
    return cfg


def _flatten(values: dict[str, Any], prefix: str):
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}.{key}")
        else:
            yield f"{prefix}.{key}", value


def load_config(path: str | Path) -> Config:
    """Read a TOML config file (see ``Config`` for the sections and keys)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}; pass an existing TOML file") from None
    except IsADirectoryError:
        raise InputError(f"config path {path} is a folder; pass a TOML file") from None
    except PermissionError:
        raise InputError(f"config file {path} is not readable; check its permissions") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None
    return config_from_dict(data, source=str(path))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as TOML, atomically."""
    text = tomli_w.dumps(cfg.to_dict()).encode("utf-8")
    atomic_write(path, lambda file: file.write(text))


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
    for key in LEGACY_KEYS.get(dotted, (dotted,)):
        *path, name = key.split(".")
        sub = cfg
        for i, part in enumerate(path):
            sub = getattr(sub, part, None)
            if sub is None or not dataclasses.is_dataclass(sub):
                raise InputError(f"unknown config section {'.'.join(path[: i + 1])!r} in {source} (from {dotted!r})")
        fields = [f.name for f in dataclasses.fields(sub) if not dataclasses.is_dataclass(getattr(sub, f.name))]
        if name not in fields:
            section = ".".join(path)
            raise InputError(f"unknown config key {dotted!r} in {source}; keys of [{section}]: {', '.join(fields)}")
        kind = type(getattr(type(sub)(), name))  # the default's type is the field's type
        setattr(sub, name, _coerce(value, kind, key, source))


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


def validate(cfg: Config) -> Config:
    """Every section's ``validate()``, then the combinations no single section can judge.
    Runs before any data is loaded, circuit compiled or job sent. Returns ``cfg`` for chaining.

    Raises:
        InputError: naming the key and the fix.
    """
    cfg.model.validate()
    cfg.data.validate()
    cfg.train.validate()
    cfg.optim.validate()
    if cfg.model.quantum != "none":
        cfg.circuit.validate(batch=cfg.train.batch_size * cfg.model.block_size)  # every token is one circuit
        cfg.execution.validate(get_backend(cfg.circuit.backend), cfg.circuit.n_qubits)
    check_controls(cfg.model, cfg.circuit)
    check_mup(cfg.model.parametrization, cfg.optim)
    roles = cfg.optim.roles()
    circuit_optimizer = roles["circuit"]
    asked = bool(cfg.optim.circuit) or cfg.optim.name == "qng"  # other presets drop QNG on a classical model
    if circuit_optimizer != "none" and cfg.model.quantum == "none" and asked:
        raise InputError(f"optimizer {circuit_optimizer} needs a circuit in the model; "
                         "use --quantum head, ffn or attn, or --optimizer adamw")  # fmt: skip
    who = f"optim.circuit={cfg.optim.circuit}" if cfg.optim.circuit else f"--optimizer {cfg.optim.name}"
    if circuit_optimizer != "none" and cfg.model.quantum_control == "classical" and asked:
        raise InputError(f"{who} trains circuits with {circuit_optimizer}, but model.quantum_control=classical has "
                         "none; use --optimizer adamw, kfac, muon or hybrid (K-FAC + AdamW there)")  # fmt: skip
    frozen = cfg.model.quantum != "none" and not cfg.circuit.trainable and not cfg.model.quantum_control
    if circuit_optimizer != "none" and frozen and asked:  # other presets leave frozen circuits alone
        raise InputError(f"{who} trains the circuit weights with {circuit_optimizer}, but circuit.trainable="
                         "false freezes them; use --optimizer adamw, kfac, muon or hybrid")  # fmt: skip
    return cfg
