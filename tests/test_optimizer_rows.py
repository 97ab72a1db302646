"""Tests for the rows of hybrid/optim/registry.py as parts: a stock torch optimizer is one row,
registered here and trained with, no other file touched; every row's part owns what it says."""

import copy

import pytest
import torch
from torch import nn

from hybrid.checkpoint import load_checkpoint
from hybrid.config import validate
from hybrid.models import HybridGPT
from hybrid.optim import ROWS, HybridOptimizer, Part, build_optimizer, parameter_groups, trainable_parameters
from hybrid.optim.linear_layers import kfac_layers
from hybrid.optim.registry import Row
from hybrid.tables import read_table
from hybrid.train import train, train_step
from tests.conftest import interrupted_and_resumed, tiny_config


def sgd_part(model: nn.Module, cfg, width_mult) -> Part:
    """The throwaway row's part: torch's SGD with momentum on every linear layer (weights and biases)."""
    layers, _ = kfac_layers(model)
    params = [p for layer in layers.values() for p in layer.parameters()]
    return Part("sgd", torch.optim.SGD([{"params": params, "name": "sgd"}], lr=0.05, momentum=0.9))


@pytest.fixture
def sgd_row(monkeypatch):
    monkeypatch.setitem(ROWS, "sgd", Row("linear", None, sgd_part, {}))


def sgd_config(**overrides):
    return tiny_config(**{"optim.name": "adamw", "optim.linear": "sgd", "model.quantum": "none", **overrides})


def test_a_stock_optimizer_row_owns_the_linear_layers_and_steps_as_torch_does(sgd_row):
    cfg = validate(sgd_config())
    torch.manual_seed(0)
    model = HybridGPT(cfg.model, 11).double()
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, cfg.optim)
    assert [part.name for part in optimizer.parts] == ["sgd", "adamw"] and not optimizer.preconditioners
    linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    names = {key: name for key, (name, _) in trainable_parameters(model).items()}
    for group in optimizer.param_groups:  # every parameter in exactly one group: linear ones SGD's
        for p in group["params"]:
            assert (group["name"] == "sgd") == (id(p) in linear), names[id(p)]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)

    ref_linear = [p for m in reference.modules() if isinstance(m, nn.Linear) for p in m.parameters()]
    rest = parameter_groups(reference, exclude={id(p) for p in ref_linear})
    o = cfg.optim
    stock = [torch.optim.SGD(ref_linear, lr=0.05, momentum=0.9),
             torch.optim.AdamW([{"params": [p for _, p in rest["decay"]], "weight_decay": o.weight_decay},
                                {"params": [p for _, p in rest["no_decay"]], "weight_decay": 0.0}],
                               lr=o.lr, betas=(o.beta1, o.beta2))]  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randint(0, 11, (2, 16), generator=g), torch.randint(0, 11, (2, 16), generator=g)
        for m, opts in ((model, [optimizer]), (reference, stock)):
            nn.functional.cross_entropy(m(x).reshape(-1, 11), y.reshape(-1)).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_hybrid_train_trains_and_resumes_with_the_stock_optimizer_row(sgd_row, tmp_path, monkeypatch):
    cfg = sgd_config(**{"train.steps": 40, "train.sample_chars": 0})
    summary = train(cfg, tmp_path / "whole", progress=False)
    rows = read_table(tmp_path / "whole" / "metrics.csv")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and summary.step == 40
    state = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["optimizer"]
    assert set(state["optimizers"]) == {"sgd", "adamw"} and state["preconditioners"] == {}
    assert all("momentum_buffer" in s for s in state["optimizers"]["sgd"]["state"].values())

    interrupted_and_resumed(monkeypatch, cfg, tmp_path / "split")  # step 20's checkpoint: 21-24 are replayed
    split, whole = (load_checkpoint(tmp_path / run / "checkpoint.pt")["model"] for run in ("split", "whole"))
    for key, value in whole.items():
        assert torch.equal(value, split[key]), key


def test_the_training_loop_calls_each_preconditioners_verb_before_backward(sgd_row):
    cfg = validate(sgd_config())
    model = HybridGPT(cfg.model, 11)
    seen = []

    class Recorder:
        """A preconditioner that records the logits it is shown and leaves gradients alone."""

        def __init__(self, params):
            self.params = params

        def before_backward(self, logits):
            seen.append((logits.shape, logits.requires_grad, [p.grad for p in self.params]))

        def precondition(self, lr):
            pass

        def stats(self):
            return {}

    optimizer = HybridOptimizer(model, [("recorder", Recorder([model.lm_head.weight]), 0.1)])
    x = torch.randint(0, 11, (2, 16))
    train_step(model, optimizer, (x, x), grad_clip=1.0)
    assert seen == [((2, 16, 11), True, [None])]  # after the forward, before any gradient
