"""Tests for the quantum self-attention of hybrid/models.py (QSANN's Gaussian projection, causal)."""

import pytest
import torch
from torch import nn

from hybrid import QuantumLayer
from hybrid.config import CircuitConfig, ModelConfig, apply_overrides
from hybrid.errors import InputError
from hybrid.models import HybridGPT, QuantumSelfAttention
from hybrid.optim import build_optimizer
from hybrid.train import train_step
from tests.conftest import tiny_config

CIRCUIT = CircuitConfig(n_qubits=3, n_layers=1, measure="ZZ")


def attn_model(blocks: str = "", **options) -> HybridGPT:
    cfg = ModelConfig(n_embd=16, n_head=2, n_layer=2, block_size=8, quantum="attn", quantum_blocks=blocks, **options)
    return HybridGPT(cfg, 11, CIRCUIT)


@pytest.mark.parametrize("blocks", ["", "0,1"])
def test_changing_a_future_token_changes_no_earlier_output(blocks):
    model = attn_model(blocks).double()
    idx = torch.randint(0, 11, (2, 8))
    for t in range(1, 8):
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 1) % 11
        before, after = model(idx), model(changed)
        torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(before[:, t], after[:, t])  # the present does see the change


def test_one_batched_circuit_call_per_projection_per_forward_pass():
    model = attn_model()
    calls = []
    for name, module in model.named_modules():
        if isinstance(module, QuantumLayer):
            module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, tuple(args[0].shape))))
    model(torch.randint(0, 11, (3, 8)))
    assert calls == [(f"blocks.1.attn.{p}.circuit", (3, 8, 3)) for p in ("query", "key", "value")]


def test_output_is_the_gaussian_projection_of_query_key_distances():
    """Against a loop over (i, j) written from QSANN's Eq. for the weights, plus the causal mask."""
    attn = QuantumSelfAttention(ModelConfig(n_embd=16, n_head=2, block_size=8), CIRCUIT.template(), "default.qubit")
    attn.double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    expected = torch.zeros(2, 5, 16, dtype=torch.float64)
    for b in range(2):
        for i in range(5):
            weights = torch.stack([torch.exp(-((q[b, i] - k[b, j]) ** 2).sum()) for j in range(i + 1)])
            expected[b, i] = (weights / weights.sum()) @ v[b, : i + 1]
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-12)


def test_kfac_sees_every_linear_and_qng_every_circuit():
    model = attn_model().double()
    cfg = apply_overrides(tiny_config(), {"optim.kfac.to_angles": True}).optim
    optimizer = build_optimizer(model, cfg)
    kfac = optimizer.preconditioners["kfac"]
    assert set(kfac.layers) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {
        f"blocks.1.attn.{p}.{part}" for p in ("query", "key", "value") for part in ("to_angles", "from_circuit")
    } <= set(kfac.layers)
    circuits = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    assert len(circuits) == 3 and optimizer.preconditioners["qng"].layers == circuits
    x, y = torch.randint(0, 11, (4, 8)), torch.randint(0, 11, (4, 8))
    before = [p.detach().clone() for p in model.parameters()]
    losses = [train_step(model, optimizer, (x, y), grad_clip=1.0) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))  # every one trains


def test_quantum_blocks_pick_the_blocks():
    assert [len([m for m in b.modules() if isinstance(m, QuantumLayer)]) for b in attn_model().blocks] == [0, 3]
    assert [len([m for m in b.modules() if isinstance(m, QuantumLayer)]) for b in attn_model("0,1").blocks] == [3, 3]
    ffn = HybridGPT(
        ModelConfig(n_embd=16, n_head=2, n_layer=2, block_size=8, quantum="ffn", quantum_blocks="0"), 11, CIRCUIT
    )
    assert [len([m for m in b.modules() if isinstance(m, QuantumLayer)]) for b in ffn.blocks] == [1, 0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.quantum_blocks": "2"}, "model.quantum_blocks must name distinct blocks in 0..1"),
        ({"model.quantum_blocks": "0,0"}, "must name distinct blocks"),
        ({"model.quantum_blocks": "last"}, "model.quantum_blocks takes comma-separated block indices"),
        (
            {"model.quantum": "head", "model.quantum_blocks": "0"},
            "leave quantum_blocks empty or use --quantum ffn or attn",
        ),
    ],
)
def test_bad_quantum_blocks_end_in_one_line(overrides, message):
    cfg = apply_overrides(tiny_config(**{"model.n_layer": 2, "model.quantum": "attn"}), overrides)
    with pytest.raises(InputError, match=message):
        HybridGPT(cfg.model, 11, cfg.circuit)
