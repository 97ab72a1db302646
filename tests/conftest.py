"""Shared fixtures: float64 comparisons, seeded RNGs, tiny configs that train in seconds."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")

import circuits  # noqa: E402
from hybrid.config import Config, apply_overrides  # noqa: E402

ALL_TEMPLATES = sorted(circuits.TEMPLATES)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # float reductions depend on it: no test may leak a change


@pytest.fixture
def one_thread():
    """One torch thread for this test (``_seed_and_threads`` restores the count afterwards)."""
    torch.set_num_threads(1)


def tiny_config(**overrides) -> Config:
    """A model small enough that 60 steps take about a second on 2 cores."""
    base = {
        "model.n_embd": 32, "model.n_head": 2, "model.n_layer": 1, "model.block_size": 16,
        "train.batch_size": 8, "train.eval_every": 20, "train.eval_batches": 2,
        "train.sample_chars": 40, "data.corpus_chars": 20_000, "optim.warmup_steps": 5,
        "optim.name": "hybrid",  # the curvature-aware preset most tests exercise (the default is muon)
    }  # fmt: skip
    return apply_overrides(Config(), {**base, **overrides})


def interrupted_and_resumed(monkeypatch, cfg: Config, out, at_call: int = 25) -> None:
    """Train ``cfg`` into ``out``, stop it with Ctrl-C at the ``at_call``-th training step (the
    steps since the last checkpoint are lost), then ``--resume`` it to the end."""
    import hybrid.train

    calls, real_step = 0, hybrid.train.train_step

    def crash(*args):
        nonlocal calls
        calls += 1
        if calls == at_call:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(hybrid.train, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        hybrid.train.train(cfg, out, progress=False)
    monkeypatch.setattr(hybrid.train, "train_step", real_step)
    hybrid.train.train(cfg, out, resume=True, progress=False)


def dense_pullback(model: torch.nn.Module, layer, x: torch.Tensor) -> torch.Tensor:
    """The oracle of the pullback metric: (1/N) sum_t J_t^T (diag p_t - p_t p_t^T) J_t with the dense
    Jacobian J (N, V, P) of the eval-mode logits in ``layer.weights`` from ``torch.autograd.functional``."""
    name = next(n for n, m in model.named_modules() if m is layer)
    model.eval()

    def logits(w):
        out = torch.func.functional_call(model, {f"{name}.weights": w}, (x,))
        return out.reshape(-1, out.shape[-1])  # (N, V)

    w0 = layer.weights.detach().clone()
    p = torch.softmax(logits(w0), -1).detach()  # (N, V)
    jac = torch.autograd.functional.jacobian(logits, w0).reshape(*p.shape, -1)  # (N, V, P)
    n = p.shape[0]
    return sum(jac[t].T @ (torch.diag(p[t]) - torch.outer(p[t], p[t])) @ jac[t] for t in range(n)) / n


class ClassesFirst(torch.nn.Module):
    """A language model with (B, V, T) outputs: curvlinops' CrossEntropyLoss wants classes second."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).transpose(1, 2)  # (B, T, V) -> (B, V, T)
