"""Hybrid quantum-classical language models in torch: circuits as layers, curvature-aware training.

import circuits, hybrid
layer = hybrid.QuantumLayer(circuits.StronglyEntangling(4, 2))   # (..., 4) -> (..., 4)
model = hybrid.HybridGPT(hybrid.ModelConfig(quantum="head"), vocab_size=27)
"""

from hybrid.backends import BACKENDS as BACKENDS
from hybrid.backends import get_backend as get_backend
from hybrid.config import CircuitConfig as CircuitConfig
from hybrid.config import Config as Config
from hybrid.config import ModelConfig as ModelConfig
from hybrid.config import load_config as load_config
from hybrid.errors import InputError as InputError
from hybrid.optim.metric import metric_tensor as metric_tensor
from hybrid.models import HybridGPT as HybridGPT
from hybrid.models import QuantumProjection as QuantumProjection
from hybrid.quantum import QuantumLayer as QuantumLayer

__all__ = [
    "BACKENDS", "CircuitConfig", "Config", "HybridGPT", "InputError", "ModelConfig",
    "QuantumLayer", "QuantumProjection", "get_backend", "load_config", "metric_tensor",
]  # fmt: skip
