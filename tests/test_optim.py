"""Tests for hybrid/optim.py: one owner per parameter, exact composition, exact state round trip."""

import io

import pytest
import torch
from torch import nn

from hybrid.config import ModelConfig, apply_overrides
from hybrid.config import validate as validate_config
from hybrid.errors import InputError
from hybrid.models import HybridGPT
from hybrid.optim import HybridOptimizer, build_optimizer, lr_factor, parameter_groups, trainable_parameters
from hybrid.quantum import QuantumLayer
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
    assert opt.part("halve").optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * factor)
    assert opt.part("adamw").optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * factor)


def test_schedulers_still_drive_every_group_after_load_state_dict():
    m = model()
    opt = HybridOptimizer(m, [("halve", Halve([m.lm_head.circuit.weights]), 0.5)], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    opt.load_state_dict(opt.state_dict())  # the inner optimizers build new group dicts here
    loss_of(m, 0).backward()
    opt.step()
    scheduler.step()
    assert opt.part("halve").optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    assert opt.part("adamw").optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)


def owners(optimizer: HybridOptimizer, m: nn.Module) -> dict[str, str]:
    """``{parameter name: "kfac" | "qng" | "adamw"}``; fails if a parameter has two owners or none."""
    names = {key: name for key, (name, _) in trainable_parameters(m).items()}
    owner: dict[str, str] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert names[id(p)] not in owner, f"{names[id(p)]} is owned twice"
            owner[names[id(p)]] = group["name"].split("_")[0]
    assert set(owner) == set(names.values()), "a parameter has no owner"
    return owner


@pytest.mark.parametrize("quantum", ["head", "ffn"])
def test_hybrid_gives_kfac_the_linear_layers_qng_the_circuits_and_adamw_the_rest(quantum):
    m = model(quantum)
    for to_angles in (False, True):
        cfg = apply_overrides(tiny_config(), {"optim.kfac_to_angles": to_angles}).optim
        assert cfg.name == "hybrid"  # tiny_config's optimizer
        owner = owners(build_optimizer(m, cfg), m)
        for name, module in m.named_modules():
            expected = None
            if isinstance(module, nn.Linear):  # the pi*tanh angle layer goes to AdamW unless asked for
                expected = "adamw" if name.endswith("to_angles") and not to_angles else "kfac"
            elif isinstance(module, QuantumLayer):
                expected = "qng"
            elif isinstance(module, (nn.Embedding, nn.LayerNorm)):
                expected = "adamw"
            for pname, _ in module.named_parameters(prefix=name, recurse=False):
                assert owner[pname] == expected, (pname, owner[pname], expected)
        assert sorted(set(owner.values())) == ["adamw", "kfac", "qng"]
        angle_layers = [n for n in owner if "to_angles" in n]
        assert len(angle_layers) == 2 and {owner[n] for n in angle_layers} == {"kfac" if to_angles else "adamw"}


def test_kfac_leaves_circuits_and_angle_layers_to_adamw_and_momentum_reaches_the_sgd_groups():
    m = model("head")
    cfg = apply_overrides(tiny_config(), {"optim.name": "kfac", "optim.momentum": 0.9}).optim
    optimizer = build_optimizer(m, cfg)
    owner = owners(optimizer, m)
    assert owner["lm_head.circuit.weights"] == owner["lm_head.to_angles.weight"] == "adamw"
    assert owner["lm_head.from_circuit.weight"] == owner["blocks.0.attn.query.bias"] == "kfac"
    assert [g["momentum"] for g in optimizer.part("kfac").optimizer.param_groups] == [0.9]
    classical = model("none")  # no QuantumProjection: nothing to leave out, no error
    assert set(owners(build_optimizer(classical, cfg), classical).values()) == {"kfac", "adamw"}
    with pytest.raises(InputError, match="optim.kfac.momentum must lie in"):
        validate_config(apply_overrides(tiny_config(), {"optim.momentum": 1.0}))
