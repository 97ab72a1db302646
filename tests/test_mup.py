"""Tests for the maximal-update parametrization (``model.parametrization = "mup"``): at its base
width it is the standard parametrization, exactly; its scaling rules hold at other widths."""

import math

import pytest
import torch

from hybrid.cli import main
from hybrid.errors import InputError
from hybrid.models import HybridGPT, ModelConfig
from hybrid.quantum import CircuitConfig

CIRCUIT = CircuitConfig(n_qubits=2, n_layers=1)


def model(width: int, parametrization: str, quantum: str = "head", seed: int = 0) -> HybridGPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(n_embd=width, n_head=4, n_layer=2, block_size=8, quantum=quantum,
                      parametrization=parametrization, base_width=64)  # fmt: skip
    return HybridGPT(cfg, vocab_size=11, circuit=CIRCUIT).double()


@pytest.mark.parametrize("quantum", ["head", "ffn", "attn", "none"])
def test_mup_at_its_base_width_is_the_standard_parametrization_in_float64(quantum):
    standard, mup = model(64, "standard", quantum), model(64, "mup", quantum)
    for (name, a), (_, b) in zip(standard.named_parameters(), mup.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))
    logits_a, logits_b = standard(idx), mup(idx)
    assert torch.equal(logits_a, logits_b)
    logits_a.square().sum().backward()
    logits_b.square().sum().backward()
    for (name, a), (_, b) in zip(standard.named_parameters(), mup.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_mup_scales_the_hidden_init_the_readout_and_attention_by_the_width():
    base, wide = model(64, "mup", "ffn"), model(256, "mup", "ffn")
    assert wide.cfg.width_mult == 4 and wide.readout_multiplier == 0.25
    for weight in wide.hidden_matrices():  # std 0.02 / sqrt(4)
        assert weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert wide.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)  # embeddings keep theirs
    assert wide.blocks[1].mlp.quantum.input_multiplier == 0.25  # to_angles reads the width out
    assert wide.blocks[0].attn.scale == pytest.approx(math.sqrt(16) / 64)  # 1/d with d_head 64, base 16
    assert base.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(16))
    assert len(wide.hidden_matrices()) == 2 * 6  # q, k, v, out, fc, proj per block
    assert all(w.shape[0] >= 256 and w.shape[1] >= 256 for w in wide.hidden_matrices())


def test_mup_needs_a_base_width_the_heads_divide(capsys):
    with pytest.raises(InputError, match=r"model.base_width \(66\) must be a multiple of model.n_head \(4\)"):
        ModelConfig(parametrization="mup", base_width=66).validate()
    ModelConfig(parametrization="standard", base_width=66).validate()  # standard ignores base_width
    assert main(["train", "--out", "/nonexistent/never", "--set", "model.parametrization=mup",
                 "--set", "model.base_width=66", "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use base_width=64" in err
