"""Validation once (hybrid/config.py ``validate``): ``hybrid train`` checks every section once
before the first batch, the constructors it calls trust that, and the Python API still checks."""

import collections
import functools

import pytest

import hybrid.train
from hybrid.backends import ExecutionConfig
from hybrid.config import TrainConfig
from hybrid.data import DataConfig
from hybrid.errors import InputError
from hybrid.models import HybridGPT, ModelConfig
from hybrid.optim import build_optimizer
from hybrid.optim.kfac import KFACPreconditioner, KFACSettings
from hybrid.optim.muon import MuonSettings
from hybrid.optim.qng import QNGSettings
from hybrid.optim.registry import OptimConfig
from hybrid.quantum import CircuitConfig, QuantumLayer
from tests.conftest import tiny_config

SECTIONS = {"model": ModelConfig, "circuit": CircuitConfig, "execution": ExecutionConfig, "data": DataConfig,
            "train": TrainConfig, "optim": OptimConfig, "optim.kfac": KFACSettings, "optim.qng": QNGSettings,
            "optim.muon": MuonSettings}  # fmt: skip


def counting(monkeypatch, cls, name, label, counts, until):
    real = getattr(cls, name)

    @functools.wraps(real)
    def counted(*args, **kwargs):
        if not until:
            counts[label] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


@pytest.mark.parametrize("quantum", ["head", "attn"])
def test_hybrid_train_checks_every_section_once_before_the_first_batch(tmp_path, monkeypatch, quantum):
    counts, forwarded = collections.Counter(), []
    for label, cls in SECTIONS.items():
        counting(monkeypatch, cls, "validate", label, counts, forwarded)
    counting(monkeypatch, QuantumLayer, "check_memory", "check_memory", counts, forwarded)
    real_forward = QuantumLayer.forward

    def forward(self, *args):
        forwarded.append(True)  # the first batch: counting stops
        return real_forward(self, *args)

    monkeypatch.setattr(QuantumLayer, "forward", forward)
    cfg = tiny_config(**{"model.quantum": quantum, "train.steps": 1, "train.sample_chars": 0})
    hybrid.train.train(cfg, tmp_path, progress=False)
    assert counts == {**dict.fromkeys(SECTIONS, 1), "check_memory": 3 if quantum == "attn" else 1}


def test_the_python_api_still_checks_its_input_once():
    with pytest.raises(InputError, match="model.n_embd"):
        HybridGPT(ModelConfig(n_embd=0), 11)
    cfg = tiny_config(**{"model.quantum": "none"})
    model = HybridGPT(cfg.model, 11)
    cfg.optim.kfac.damping = -1.0
    with pytest.raises(InputError, match="optim.kfac.damping"):
        build_optimizer(model, cfg.optim)  # not validated by its caller: checked here
    with pytest.raises(InputError, match="damping must be"):
        KFACPreconditioner(model, damping=-1.0)  # keywords: checked by the constructor
