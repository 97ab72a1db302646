"""Tests for hybrid/optim.py: one owner per parameter, exact composition, exact state round trip."""

import io

import pytest
import torch
from torch import nn

from hybrid.config import ModelConfig
from hybrid.models import HybridGPT
from hybrid.optim import HybridOptimizer, lr_factor, parameter_groups
from tests.conftest import tiny_config


class Halve:
    """A test double for a preconditioner: grad <- grad / 2, with a step counter as state."""

    def __init__(self, params):
        self.params, self.calls = list(params), 0

    def precondition(self, lr):
        self.calls += 1
        for p in self.params:
            p.grad.mul_(0.5)

    def stats(self):
        return {"halve_calls": float(self.calls)}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def model(quantum="head"):
    torch.manual_seed(0)
    return HybridGPT(ModelConfig(n_embd=16, n_head=2, n_layer=1, block_size=8, quantum=quantum), 7).double()


def loss_of(m, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 7, (4, 8), generator=g)
    y = torch.randint(0, 7, (4, 8), generator=g)
    return nn.functional.cross_entropy(m(x).reshape(-1, 7), y.reshape(-1))


def run(m, opt, steps, start=0):
    for s in range(start, start + steps):
        loss_of(m, s).backward()
        opt.step()
        opt.zero_grad()


def test_without_preconditioners_it_is_adamw():
    a, b = model(), model()
    groups = parameter_groups(b)
    reference = torch.optim.AdamW(
        [{"params": [p for _, p in groups["decay"]], "weight_decay": 0.1},
         {"params": [p for _, p in groups["no_decay"]], "weight_decay": 0.0}], lr=1e-2)  # fmt: skip
    run(a, HybridOptimizer(a, lr=1e-2, weight_decay=0.1), 5)
    run(b, reference, 5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_preconditioned_parameters_take_an_sgd_step_on_the_rewritten_gradient():
    m = model()
    owned = [m.lm_head.circuit.weights]
    before = owned[0].detach().clone()
    opt = HybridOptimizer(m, [("halve", Halve(owned), 0.3)], lr=1e-2)
    loss_of(m, 0).backward()
    grad = owned[0].grad.clone()
    opt.step()
    torch.testing.assert_close(owned[0], before - 0.3 * 0.5 * grad)
    assert opt.stats() == {"halve_calls": 1.0}
    assert [g["name"] for g in opt.param_groups] == ["halve", "adamw_decay", "adamw_no_decay"]


def test_every_parameter_has_exactly_one_owner():
    m = model()
    w = m.lm_head.circuit.weights
    with pytest.raises(ValueError, match=r"parameter 'lm_head.circuit.weights' is owned by both 'a' and 'b'"):
        HybridOptimizer(m, [("a", Halve([w]), 0.1), ("b", Halve([w]), 0.1)])
    with pytest.raises(ValueError, match="owns a tensor that is not a model parameter"):
        HybridOptimizer(m, [("a", Halve([nn.Parameter(torch.zeros(2))]), 0.1)])
    m.lm_head.from_circuit.weight = m.lm_head.to_angles.weight  # shapes differ, but ownership is checked first
    with pytest.raises(ValueError, match="are the same tensor"):
        HybridOptimizer(m)


def test_state_round_trip_continues_the_same_trajectory():
    a, b = model(), model()
    opt_a = HybridOptimizer(a, [("halve", Halve([a.lm_head.circuit.weights]), 0.1)], lr=1e-2, momentum=0.9)
    run(a, opt_a, 6)

    opt_b = HybridOptimizer(b, [("halve", Halve([b.lm_head.circuit.weights]), 0.1)], lr=1e-2, momentum=0.9)
    run(b, opt_b, 3)
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    c = model()
    c.load_state_dict(saved["model"])
    opt_c = HybridOptimizer(c, [("halve", Halve([c.lm_head.circuit.weights]), 0.1)], lr=1e-2, momentum=0.9)
    opt_c.load_state_dict(saved["opt"])
    run(c, opt_c, 3, start=3)
    for pa, pc in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pc)
    assert opt_c.stats() == {"halve_calls": 6.0}


def test_lr_schedulers_drive_every_group():
    m = model()
    opt = HybridOptimizer(m, [("halve", Halve([m.lm_head.circuit.weights]), 0.5)], lr=1e-2)
    cfg = tiny_config().optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, 100))
    for _ in range(3):
        loss_of(m, 0).backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
    factor = lr_factor(3, cfg, 100)
    assert opt.sgd.param_groups[0]["lr"] == pytest.approx(0.5 * factor)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1e-2 * factor)


def test_schedulers_still_drive_every_group_after_load_state_dict():
    m = model()
    opt = HybridOptimizer(m, [("halve", Halve([m.lm_head.circuit.weights]), 0.5)], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    opt.load_state_dict(opt.state_dict())  # the inner optimizers build new group dicts here
    loss_of(m, 0).backward()
    opt.step()
    scheduler.step()
    assert opt.sgd.param_groups[0]["lr"] == pytest.approx(0.25)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(5e-3)
