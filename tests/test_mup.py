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


def coordinates(width: int, parametrization: str, optimizer: str = "adamw", steps: int = 3,
                lr: float = 0.01, inverse: str = "eigh") -> dict[str, float]:  # fmt: skip
    """The RMS of every block's output, the attention and MLP outputs and the logits after
    ``steps`` steps of ``optimizer`` (the rows' muP rates; eigen_adam in its eigenbasis from the
    second step, K-FAC with its ``inverse`` block from the first), on one fixed batch: muP's
    coordinate check."""
    from hybrid.optim import OptimConfig, build_optimizer
    from hybrid.optim.eigen_adam import EigenAdamSettings
    from hybrid.optim.kfac import KFACSettings

    torch.manual_seed(0)
    cfg = ModelConfig(n_embd=width, n_head=4, n_layer=2, block_size=16, quantum="none",
                      parametrization=parametrization, base_width=64)  # fmt: skip
    net = HybridGPT(cfg, vocab_size=11)
    eigen = EigenAdamSettings(lr=lr, weight_decay=0.0, basis_every=1, curvature_every=1)
    kfac = KFACSettings(curvature_every=1, inverse_every=1, inverse=inverse)
    optimizer = build_optimizer(net, OptimConfig(name=optimizer, lr=lr, grad_clip=0.0, weight_decay=0.0,
                                                 eigen_adam=eigen, kfac=kfac))  # fmt: skip
    idx = torch.arange(8 * 17).reshape(8, 17) % 11  # a pattern the model can learn
    x, y = idx[:, :-1], idx[:, 1:]
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x).reshape(-1, 11), y.reshape(-1)).backward()
        optimizer.step()
    rms, hooks = {}, []
    for name, module in net.named_modules():
        if name.count(".") == 1 and name.startswith("blocks.") or name.endswith((".attn", ".mlp")):
            hooks.append(module.register_forward_hook(
                lambda m, i, out, name=name: rms.__setitem__(name, out.pow(2).mean().sqrt().item())))  # fmt: skip
    with torch.no_grad():
        rms["logits"] = net(x).pow(2).mean().sqrt().item()
    for hook in hooks:
        hook.remove()
    return rms


@pytest.mark.parametrize(
    "optimizer, inverse, bound",
    [("adamw", "eigh", 2), ("eigen_adam", "eigh", 3), ("kfac", "eigh", 3), ("kfac", "cholesky", 4)],
)
def test_the_coordinate_check_holds_under_mup_and_fails_under_standard(optimizer, inverse, bound):
    """AdamW's RMS spread 1.97x from width 32 to 512 under mup, eigen_adam's 2.57x (its activations
    shrink slightly with width in the eigenbasis; 2.14x from width 64), K-FAC's 2.37x (eigh) and
    3.28x (cholesky); under standard they grow ~40x (K-FAC's MLP outputs 39x and 81x)."""
    widths = (32, 64, 128, 256, 512)
    for parametrization, bounded in (("mup", True), ("standard", False)):
        table = [coordinates(w, parametrization, optimizer, inverse=inverse) for w in widths]
        spread = {key: max(row[key] for row in table) / min(row[key] for row in table) for key in table[0]}
        if bounded:
            assert all(ratio < bound for ratio in spread.values()), spread
        else:  # the logits grow with the width under the standard parametrization
            assert spread["logits"] > 2 and table[-1]["logits"] > table[0]["logits"], spread


def test_mup_scales_adamw_and_muon_rates_keeps_kfac_and_refuses_its_graft(capsys):
    from hybrid.optim import OptimConfig, build_optimizer
    from hybrid.optim.kfac import KFACSettings

    wide = model(256, "mup", "none")
    groups = {g["name"]: g for g in build_optimizer(wide, OptimConfig(name="adamw", lr=0.01)).param_groups}
    assert groups["adamw_hidden"]["lr"] == pytest.approx(0.0025) and groups["adamw_decay"]["lr"] == 0.01
    assert len(groups["adamw_hidden"]["params"]) == len(wide.hidden_matrices())
    groups = {g["name"]: g for g in build_optimizer(
        wide, OptimConfig(name="muon", weight_decay_scaling="inverse_width")).param_groups}  # fmt: skip
    assert groups["muon"]["lr"] == pytest.approx(OptimConfig().muon.lr / 2)  # match_rms_adamw: 1 / sqrt(4)
    assert groups["muon"]["weight_decay"] == pytest.approx(0.01 / 4)
    base = {g["name"]: g["lr"] for g in build_optimizer(model(64, "mup", "none"), OptimConfig()).param_groups}
    standard = {g["name"]: g["lr"] for g in build_optimizer(model(64, "standard", "none"), OptimConfig()).param_groups}
    assert base == standard  # at base_width nothing changes
    kfac = build_optimizer(wide, OptimConfig(name="kfac")).parts[0].preconditioner  # the readout's damping / 4
    assert kfac._damping == {name: 0.01 / 4 if name == "lm_head" else 0.01 for name in kfac.layers}
    groups = {g["name"]: g["lr"] for g in build_optimizer(wide, OptimConfig(name="kfac")).param_groups}
    assert groups["kfac"] == OptimConfig().kfac.lr  # the rate stays put
    base = build_optimizer(model(64, "mup", "none"), OptimConfig(name="kfac")).parts[0].preconditioner
    assert set(base._damping.values()) == {0.01}  # at base_width nothing changes
    with pytest.raises(InputError, match="optim.kfac.graft and optim.kfac.adam_steps"):
        build_optimizer(wide, OptimConfig(name="hybrid", kfac=KFACSettings(graft=True)))
    assert main(["train", "--out", "/nonexistent/never", "--set", "model.parametrization=mup",
                 "--optimizer", "hybrid", "--set", "optim.kfac.adam_steps=5", "--quiet"]) == 2  # fmt: skip
    assert main(["train", "--out", "/nonexistent/never", "--set", "optim.weight_decay_scaling=inverse_width",
                 "--quiet"]) == 2  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert "optim.kfac.graft and optim.kfac.adam_steps" in err[0] and "under model.parametrization=mup only" in err[1]


def test_eigen_adam_under_mup_steps_as_torch_adamw_at_the_hidden_rate_before_its_first_basis():
    """The oracle: ``torch.optim.AdamW`` with muP's groups (hidden matrices at lr / width_mult and
    decay / width_mult, the rest at lr), on a copy of the model, in float64."""
    from hybrid.optim import OptimConfig, build_optimizer
    from hybrid.optim.eigen_adam import EigenAdamSettings

    ours, theirs = model(256, "mup", "none"), model(256, "mup", "none")
    for net in (ours, theirs):  # only the linear layers train: eigen_adam's part alone
        for name, p in net.named_parameters():
            p.requires_grad_(".attn." in name or ".mlp." in name or name.startswith("lm_head"))
    lr, decay = 0.01, 0.1
    cfg = OptimConfig(name="eigen_adam", lr=lr, weight_decay=decay, grad_clip=0.0, weight_decay_scaling="inverse_width",
                      eigen_adam=EigenAdamSettings(lr=lr, weight_decay=decay, basis_every=1000))  # fmt: skip
    optimizer = build_optimizer(ours, cfg)
    layers = set(optimizer.preconditioners["eigen_adam"].layers)
    hidden = {id(w) for w in theirs.hidden_matrices()}
    owned = [(n, p) for n, p in theirs.named_parameters() if n.rsplit(".", 1)[0] in layers]
    assert {id(p) for _, p in owned if p.ndim == 2} >= hidden  # eigen_adam owns every hidden matrix
    groups = [{"params": [p for _, p in owned if id(p) in hidden], "lr": lr / 4, "weight_decay": decay / 4},
              {"params": [p for _, p in owned if id(p) not in hidden and p.ndim == 2], "lr": lr,
               "weight_decay": decay},
              {"params": [p for _, p in owned if p.ndim < 2], "lr": lr, "weight_decay": 0.0}]  # fmt: skip
    assert groups[0]["params"] and groups[1]["params"]  # hidden matrices and the lm_head readout
    oracle = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.99), eps=1e-8)
    idx = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        for net, opt in ((ours, optimizer), (theirs, oracle)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(idx[:, :-1]).reshape(-1, 11), idx[:, 1:].reshape(-1)).backward()
            opt.step()
    mine = dict(ours.named_parameters())
    for name, p in owned:
        torch.testing.assert_close(mine[name], p, rtol=0, atol=1e-12, msg=name)
