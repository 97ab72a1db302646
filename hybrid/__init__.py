"""Hybrid quantum-classical language models in torch: circuits as layers, curvature-aware training.

import circuits, hybrid
layer = hybrid.QuantumLayer(circuits.StronglyEntangling(4, 2))   # (..., 4) -> (..., 4)
model = hybrid.HybridGPT(hybrid.ModelConfig(quantum="head"), vocab_size=27)
opt = hybrid.build_optimizer(model, hybrid.OptimConfig(name="hybrid"))   # K-FAC + QNG + AdamW

The names users write in their own code; everything else lives in its layer (see README,
Architecture): ``hybrid.optim`` (preconditioners, the optimizer, the registry), ``hybrid.train``,
``hybrid.diagnostics``, ``hybrid.hf``.
"""

import importlib
from typing import TYPE_CHECKING

# name -> the module that defines it; imported on first use (PEP 562), so that `import hybrid.cli`
# and `hybrid --help` do not pay for torch, PennyLane and Qiskit before a verb needs them
_EXPORTS = {
    "BACKENDS": "hybrid.backends",
    "ExecutionConfig": "hybrid.backends",
    "get_backend": "hybrid.backends",
    "Config": "hybrid.config",
    "load_config": "hybrid.config",
    "InputError": "hybrid.errors",
    "HybridGPT": "hybrid.models",
    "ModelConfig": "hybrid.models",
    "QuantumProjection": "hybrid.models",
    "KFAC": "hybrid.optim",
    "QNG": "hybrid.optim",
    "HybridOptimizer": "hybrid.optim",
    "OptimConfig": "hybrid.optim",
    "build_optimizer": "hybrid.optim",
    "metric_tensor": "hybrid.optim",
    "classical_fisher": "hybrid.optim.circuit_fisher",
    "quantum_fisher": "hybrid.optim.circuit_fisher",
    "CircuitConfig": "hybrid.quantum",
    "QuantumLayer": "hybrid.quantum",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hybrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from hybrid.backends import BACKENDS as BACKENDS
    from hybrid.backends import ExecutionConfig as ExecutionConfig
    from hybrid.backends import get_backend as get_backend
    from hybrid.config import Config as Config
    from hybrid.config import load_config as load_config
    from hybrid.errors import InputError as InputError
    from hybrid.models import HybridGPT as HybridGPT
    from hybrid.models import ModelConfig as ModelConfig
    from hybrid.models import QuantumProjection as QuantumProjection
    from hybrid.optim import KFAC as KFAC
    from hybrid.optim import QNG as QNG
    from hybrid.optim import HybridOptimizer as HybridOptimizer
    from hybrid.optim import OptimConfig as OptimConfig
    from hybrid.optim import build_optimizer as build_optimizer
    from hybrid.optim import metric_tensor as metric_tensor
    from hybrid.optim.circuit_fisher import classical_fisher as classical_fisher
    from hybrid.optim.circuit_fisher import quantum_fisher as quantum_fisher
    from hybrid.quantum import CircuitConfig as CircuitConfig
    from hybrid.quantum import QuantumLayer as QuantumLayer

__all__ = [
    "BACKENDS", "KFAC", "QNG", "CircuitConfig", "Config", "ExecutionConfig", "HybridGPT", "HybridOptimizer",
    "InputError", "ModelConfig", "OptimConfig", "QuantumLayer", "QuantumProjection", "build_optimizer",
    "classical_fisher", "get_backend", "load_config", "metric_tensor", "quantum_fisher",
]  # fmt: skip
