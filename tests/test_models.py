"""Tests for hybrid/models.py and hybrid/hf.py."""

import pytest
import torch
from torch import nn

import circuits
from hybrid import QuantumLayer
from hybrid.config import CircuitConfig, ModelConfig
from hybrid.data import Dataset
from hybrid.models import HybridGPT, QuantumProjection
from hybrid.optim import build_optimizer, parameter_groups
from hybrid.train import lm_loss, train_step
from tests.conftest import tiny_config

CIRCUIT = CircuitConfig(n_qubits=3, n_layers=1, measure="ZZ")


@pytest.mark.parametrize("quantum, n_circuits", [("head", 1), ("ffn", 1), ("none", 0)])
def test_placements_shapes_and_circuit_count(quantum, n_circuits):
    model = HybridGPT(ModelConfig(n_embd=16, n_head=2, n_layer=2, block_size=8, quantum=quantum), 11, CIRCUIT)
    logits = model(torch.randint(0, 11, (3, 8)))
    assert logits.shape == (3, 8, 11)
    layers = [m for m in model.modules() if isinstance(m, QuantumLayer)]
    assert len(layers) == n_circuits
    assert all(layer.last_inputs.shape == (24, 3) for layer in layers)  # every token of the batch


def test_the_future_does_not_leak_into_the_past():
    model = HybridGPT(ModelConfig(n_embd=16, n_head=2, n_layer=2, block_size=8, quantum="ffn"), 11, CIRCUIT).double()
    idx = torch.randint(0, 11, (2, 8))
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    torch.testing.assert_close(model(idx)[:, :5], model(changed)[:, :5])


def test_every_projection_is_an_nn_linear_and_weights_are_untied():
    model = HybridGPT(ModelConfig(n_embd=16, n_head=2, n_layer=1, block_size=8, quantum="head"), 11, CIRCUIT)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert {"blocks.0.attn.query", "blocks.0.attn.key", "blocks.0.attn.value", "blocks.0.attn.out",
            "blocks.0.mlp.fc", "blocks.0.mlp.proj", "lm_head.to_angles", "lm_head.from_circuit"} <= names  # fmt: skip
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    groups = parameter_groups(model)  # raises on tied weights
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_tied_weights_are_refused_by_name():
    model = HybridGPT(ModelConfig(n_embd=16, n_head=2, n_layer=1, block_size=8, quantum="none"), 11)
    model.lm_head.weight = model.wte.weight
    with pytest.raises(ValueError, match="'wte.weight' and 'lm_head.weight' are the same tensor"):
        parameter_groups(model)


def test_angles_are_pi_tanh_of_a_linear_map():
    proj = QuantumProjection(5, 7, circuits.StronglyEntangling(2, 1), "default.qubit")
    x = torch.randn(4, 5)
    proj(x)
    torch.testing.assert_close(proj.circuit.last_inputs, torch.pi * torch.tanh(proj.to_angles(x)).detach())


def test_quantum_head_trains_inside_a_hugging_face_gpt2():
    transformers = pytest.importorskip("transformers")  # the hf extra; installed by .ci/run
    from hybrid.hf import attach_quantum_head

    cfg = tiny_config()
    text = "the cat sees a dog .\nthe dog likes a cat .\n" * 50
    data = Dataset.from_text(text, 0.1)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=len(data.tokenizer),
            n_positions=16,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )  # fmt: skip
    )
    attach_quantum_head(gpt2, circuits.StronglyEntangling(3, 1, measure="all"))
    assert isinstance(gpt2.lm_head, QuantumProjection)
    assert gpt2.lm_head.from_circuit.weight is not gpt2.transformer.wte.weight
    optimizer = build_optimizer(gpt2, cfg.optim)
    g = torch.Generator().manual_seed(0)
    fixed = data.batch("train", 16, 16, torch.Generator().manual_seed(1))
    before = lm_loss(gpt2, *fixed).item()
    for _ in range(40):
        train_step(gpt2, optimizer, data.batch("train", 16, 16, g), grad_clip=1.0)
    assert lm_loss(gpt2, *fixed).item() < before - 0.5
    assert gpt2.lm_head.circuit.weights.grad is None and gpt2.lm_head.circuit.last_inputs.shape == (256, 3)
