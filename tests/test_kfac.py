"""Tests for hybrid/optim/kfac.py: factors against curvlinops, the damped step against a dense solve,
hooks, layer selection, failure modes, exact resume, and ``hybrid train --optimizer kfac``."""

import io
import math
import warnings

import pytest
import torch
from torch import nn

from hybrid.cli import main
from hybrid.config import ModelConfig
from hybrid.errors import InputError
from hybrid.models import HybridGPT
from hybrid.optim import HybridOptimizer, build_optimizer
from hybrid.optim.kfac import KFAC, KFACPreconditioner, KFACSettings
from hybrid.optim.linear_layers import grad_matrix
from hybrid.tables import read_table
from hybrid.train import train, train_step
from tests.conftest import ClassesFirst, tiny_config

with warnings.catch_warnings():  # linear_operator, a curvlinops dependency, uses torch.jit.script
    warnings.simplefilter("ignore", DeprecationWarning)
    from curvlinops import KFACLinearOperator

V = 7  # classes / vocabulary of the small models


pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny ops: a second thread only waits


def mlp(bias_last=True):
    torch.manual_seed(0)
    # ReLU(inplace=True) modifies the first layer's output after the hooks saw it
    return nn.Sequential(
        nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, V, bias=bias_last)
    ).double()


def gpt(quantum):
    torch.manual_seed(0)
    model = HybridGPT(ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum=quantum), V).double()
    for m in model.modules():  # away from the 0.02 initialization, where q/k gradients nearly vanish
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
            nn.init.normal_(m.bias, std=0.1)
    return model


def data(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randint(0, V, (9,), generator=g)
    return torch.randint(0, V, (3, 6), generator=g), torch.randint(0, V, (3, 6), generator=g)


def our_factors(model, x, y, **kwargs):
    kfac = KFACPreconditioner(model, **kwargs)
    out = model(x)
    out = out.transpose(1, 2) if out.dim() == 3 else out
    nn.functional.cross_entropy(out, y).backward()
    kfac.precondition(lr=0.1)
    return kfac


def curvlinops_blocks(model, x, y, layers, fisher_type, approx):
    """``{name: dense K-FAC block}`` in torch's parameter order [W.flatten(), b]."""
    params = [p for m in layers.values() for p in m.parameters()]
    op = KFACLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type=fisher_type, kfac_approx=approx,
        separate_weight_and_bias=False, check_deterministic=False,
    )  # fmt: skip
    blocks, offset, total = {}, 0, sum(p.numel() for p in params)
    for name, m in layers.items():
        k = sum(p.numel() for p in m.parameters())
        columns = torch.zeros(total, k, dtype=torch.float64)
        columns[offset : offset + k] = torch.eye(k, dtype=torch.float64)
        blocks[name] = (op @ columns)[offset : offset + k]
        offset += k
    return blocks, op


def kron_in_parameter_order(A, G, layer):
    """kron(G, A) indexes the row-major [W | b]; reorder to [W.flatten(), b]."""
    d_out, d_in = layer.weight.shape
    a = A.shape[0]
    order = [i * a + j for i in range(d_out) for j in range(d_in)]
    order += [i * a + d_in for i in range(d_out)] if layer.bias is not None else []
    block = torch.kron(G, A)
    return block[order][:, order]


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("kind", ["mlp", "head", "ffn"])
def test_curvature_blocks_equal_curvlinops_kfac(kind, approx):
    model = mlp() if kind == "mlp" else gpt(kind)
    x, y = data(kind)
    kfac = our_factors(model, x, y, approx=approx)
    assert set(kfac.factors()) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wrapped = model if kind == "mlp" else ClassesFirst(model)
    prefix = "" if kind == "mlp" else "model."
    layers = {prefix + name: layer for name, layer in kfac.layers.items()}
    theirs, op = curvlinops_blocks(wrapped, x, y, layers, "empirical", approx)
    state = op.state_dict()
    for name, (A, G) in kfac.factors().items():
        ours = kron_in_parameter_order(A, G, kfac.layers[name])
        torch.testing.assert_close(ours, theirs[prefix + name], rtol=1e-8, atol=1e-8)
        # and the factors themselves: our normalization is curvlinops' for a mean loss
        torch.testing.assert_close(A, state["input_covariances"][prefix + name], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(G, state["gradient_covariances"][prefix + name], rtol=1e-8, atol=1e-12)


def test_expand_and_reduce_differ_on_sequences():
    x, y = data("head")
    expand = our_factors(gpt("head"), x, y, approx="expand").factors()
    reduce = our_factors(gpt("head"), x, y, approx="reduce").factors()
    assert not torch.allclose(expand["lm_head.from_circuit"][0], reduce["lm_head.from_circuit"][0])


def test_mc_factors_approach_the_type2_fisher():
    """The MC Fisher's G is an unbiased estimate of the type-2 (exact) Fisher's G: averaged over
    S draws its relative error falls like 1/sqrt(S). Stated tolerance: below 8% at S = 256 (seeds
    0-2 give 2-5%), and at least 3x below the error at S = 4 (8x expected)."""
    model, (x, y) = mlp(), data("mlp")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    _, op = curvlinops_blocks(model, x, y, layers, "type-2", "expand")  # before our hooks exist
    exact = op.state_dict()
    kfac = KFACPreconditioner(model, fisher="mc", curvature_every=1, curvature_ema=0.0, inverse_every=10**6)
    sums, errors = {name: 0.0 for name in kfac.layers}, {}
    for s in range(1, 257):
        logits = model(x)
        kfac.sampled_backward(logits)
        nn.functional.cross_entropy(logits, y).backward()
        kfac.precondition(lr=0.1)
        model.zero_grad()
        for name, (A, G) in kfac.factors().items():
            sums[name] = sums[name] + G
            torch.testing.assert_close(A, exact["input_covariances"][name], rtol=1e-10, atol=1e-12)
        if s in (4, 256):
            errors[s] = max(
                ((sums[n] / s - exact["gradient_covariances"][n]).norm() / exact["gradient_covariances"][n].norm())
                for n in kfac.layers
            )
    assert errors[256] < 0.08
    assert errors[256] < errors[4] / 3


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
@pytest.mark.parametrize("scales", [{}, {"4": 0.25}])  # muP's readout damping (registry.kfac_part)
def test_damped_step_equals_the_dense_kronecker_solve(inverse, scales):
    model, (x, y) = mlp(bias_last=False), data("mlp")
    kfac = KFACPreconditioner(model, damping=0.05, kl_clip=0.0, inverse=inverse, damping_scales=scales)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {name: grad_matrix(kfac.layers[name]).clone() for name in kfac.layers}  # (d_out, d_in [+ 1])
    kfac.precondition(lr=0.1)
    for name, (A, G) in kfac.factors().items():
        damping = 0.05 * scales.get(name, 1.0)
        if inverse == "eigh":  # exact Tikhonov damping of the Kronecker product
            matrix = torch.kron(G, A) + damping * torch.eye(G.shape[0] * A.shape[0], dtype=A.dtype)
        else:  # factored damping with Martens & Grosse's pi
            pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
            eye_a, eye_g = torch.eye(A.shape[0], dtype=A.dtype), torch.eye(G.shape[0], dtype=A.dtype)
            matrix = torch.kron(G + math.sqrt(damping) / pi * eye_g, A + pi * math.sqrt(damping) * eye_a)
        expected = torch.linalg.solve(matrix, grads[name].flatten()).view_as(grads[name])
        torch.testing.assert_close(grad_matrix(kfac.layers[name]), expected, rtol=1e-9, atol=1e-12)


def test_kl_clip_caps_lr2_update_dot_grad():
    model, (x, y) = mlp(), data("mlp")
    kfac = KFACPreconditioner(model, kl_clip=1e-4)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {name: grad_matrix(kfac.layers[name]).clone() for name in kfac.layers}
    kfac.precondition(lr=0.5)
    nu = kfac.stats()["kfac_kl_scale"]
    clipped_dot_grad = sum((grad_matrix(kfac.layers[n]) * g).sum() for n, g in grads.items())  # nu <update, grad>
    assert nu < 1 and 0.5**2 * nu * clipped_dot_grad == pytest.approx(1e-4, rel=1e-9)  # nu^2 lr^2 <update, grad>


def test_hooks_store_nothing_off_curvature_steps():
    model, (x, y) = mlp(), data("mlp")
    kfac = KFACPreconditioner(model, curvature_every=3)
    captured = []
    for step in range(4):
        nn.functional.cross_entropy(model(x), y).backward()
        captured.append(sum(len(v) for v in (*kfac.capture.inputs.values(), *kfac.capture.grads.values())))
        before = {n: A.clone() for n, (A, _) in kfac.factors().items()}
        kfac.precondition(lr=0.1)
        model.zero_grad()
        if step in (1, 2):
            assert all(torch.equal(before[n], A) for n, (A, _) in kfac.factors().items())
    assert captured == [6, 0, 0, 6]  # (x, g) for 3 layers on steps 0 and 3 only
    with torch.no_grad():  # evaluation and generation are ignored too
        model(x)
    assert not any(kfac.capture.inputs.values())
    kfac.remove()
    nn.functional.cross_entropy(model(x), y).backward()
    assert not any(kfac.capture.inputs.values())


def test_layer_selection_and_ownership():
    model = HybridGPT(ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum="head"), V)
    kfac = KFACPreconditioner(model)
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(kfac.layers) == linear and "lm_head.to_angles" in linear and "lm_head.from_circuit" in linear
    owned = {id(p) for p in kfac.params}
    rest = {n for n, p in model.named_parameters() if id(p) not in owned}
    assert rest == {"wte.weight", "wpe.weight", "blocks.0.ln_1.weight", "blocks.0.ln_1.bias", "blocks.0.ln_2.weight",
                    "blocks.0.ln_2.bias", "ln_f.weight", "ln_f.bias", "lm_head.circuit.weights"}  # fmt: skip
    kfac.remove()

    excluded = KFACPreconditioner(model, exclude=["blocks.*.attn", "lm_head.from_circuit"], max_dim=30)
    assert set(excluded.layers) == {"lm_head.to_angles"}
    assert excluded.excluded["blocks.0.attn.query"] == "excluded by name"
    assert excluded.excluded["blocks.0.mlp.fc"] == "a factor wider than max_dim=30"  # G is 32 x 32
    excluded.remove()
    with pytest.raises(InputError, match=r"pattern\(s\) \['lm_haed'\] match no module"):
        KFACPreconditioner(model, exclude=["lm_haed"])


def test_build_optimizer_gives_every_parameter_one_owner():
    model = HybridGPT(ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum="head"), V)
    cfg = tiny_config(**{"optim.name": "kfac"}).optim
    opt = build_optimizer(model, cfg)
    assert [g["name"] for g in opt.param_groups] == ["kfac", "adamw_decay", "adamw_no_decay"]
    groups = [p for g in opt.param_groups for p in g["params"]]
    assert len(groups) == len({id(p) for p in groups}) == len(list(model.parameters()))


def test_multihead_attention_frozen_and_tied_layers():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, 4)
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)  # calls out_proj functionally
            self.frozen = nn.Linear(4, 4).requires_grad_(False)
            self.head = nn.Linear(4, V, bias=False)

    model = Model()
    kfac = KFACPreconditioner(model)
    assert set(kfac.layers) == {"head"}
    assert "MultiheadAttention" in kfac.excluded["attn.out_proj"] and kfac.excluded["frozen"] == "frozen"
    model.head.weight = model.emb.weight  # tied
    with pytest.raises(InputError, match=r"layer 'head' shares its parameters with \['emb.weight'\]"):
        KFACPreconditioner(model)
    with pytest.raises(InputError, match="no nn.Linear layer K-FAC can precondition"):
        KFACPreconditioner(model, exclude=["head"])


def test_weight_used_outside_forward_is_an_error():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(5, 6)
            self.out = nn.Linear(6, V)

        def forward(self, x):
            return self.out(nn.functional.linear(x, self.inner.weight, self.inner.bias))  # bypasses inner's hooks

    model = Functional().double()
    kfac = KFACPreconditioner(model)
    x, y = data("mlp")
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="saw no forward pass of 'inner'.*exclude it"):
        kfac.precondition(lr=0.1)


def test_forwards_that_are_never_backpropagated_are_left_out_of_the_factors():
    # e.g. a loss printed with grad enabled before the training forward of the step
    x, y = data("mlp")
    expected = our_factors(mlp(), x, y).factors()
    model = mlp()
    kfac = KFACPreconditioner(model)
    model(x[:4])  # recorded by the hooks, never backpropagated
    nn.functional.cross_entropy(model(x), y).backward()
    kfac.precondition(lr=0.1)
    for name, (A, G) in kfac.factors().items():
        torch.testing.assert_close(A, expected[name][0], rtol=0, atol=0)
        torch.testing.assert_close(G, expected[name][1], rtol=0, atol=0)


def test_mc_fisher_without_sampled_backward_is_an_error():
    model, (x, y) = mlp(), data("mlp")
    kfac = KFACPreconditioner(model, fisher="mc")
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"call sampled_backward\(logits\) before loss.backward"):
        kfac.precondition(lr=0.1)


def test_bad_factors_and_failed_decompositions_keep_the_previous_ones(monkeypatch):
    model, (x, y) = mlp(), data("mlp")
    kfac = KFACPreconditioner(model, curvature_every=1, inverse_every=1)

    def step():
        nn.functional.cross_entropy(model(x), y).backward()
        kfac.precondition(lr=0.1)
        finite = all(torch.isfinite(p.grad).all() for p in kfac.params)
        model.zero_grad()
        return finite

    assert step()
    kept = {n: {k: t.clone() for k, t in e.items()} for n, e in kfac._decomposed.items()}
    kfac.factors()["0"][0].fill_(math.nan)  # a poisoned factor: not decomposed, the old result stays
    kfac.curvature_ema = 0.999999  # ... and still NaN after the next update mixes in the batch
    assert step()
    assert kfac.stats()["kfac_fallbacks"] == 1
    assert all(torch.equal(kept["0"][k], t) for k, t in kfac._decomposed["0"].items())

    def broken_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("ill-conditioned")

    monkeypatch.setattr(torch.linalg, "eigh", broken_eigh)
    assert step()
    assert kfac.stats()["kfac_fallbacks"] == 1 + 6  # six factors (three layers), all kept


def test_tiny_damping_in_float32_stays_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, V)).float()  # 4 samples: A has rank <= 4
    x, y = torch.randn(4, 40), torch.randint(0, V, (4,))
    for inverse in ("eigh", "cholesky"):
        kfac = KFACPreconditioner(model, damping=1e-12, inverse=inverse)
        nn.functional.cross_entropy(model(x), y).backward()
        kfac.precondition(lr=0.1)
        assert all(torch.isfinite(p.grad).all() for p in kfac.params), inverse
        model.zero_grad()
        kfac.remove()


@pytest.mark.parametrize("fisher", ["empirical", "mc"])
def test_state_round_trip_continues_the_same_trajectory(fisher):
    cfg = tiny_config(**{"optim.name": "kfac", "optim.fisher": fisher, "optim.kfac_curvature_every": 2,
                         "optim.kfac_inverse_every": 3})  # fmt: skip
    batches = [data("head", seed) for seed in range(8)]

    def run(model, opt, steps):
        for b in steps:
            train_step(model, opt, batches[b], grad_clip=1.0)

    a = gpt("head")
    opt_a = build_optimizer(a, cfg.optim)
    run(a, opt_a, range(8))

    b = gpt("head")
    opt_b = build_optimizer(b, cfg.optim)
    run(b, opt_b, range(5))  # stop between decompositions (steps 3 and 6) and off a curvature step
    buffer = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    c = gpt("head")
    c.load_state_dict(saved["model"])
    opt_c = build_optimizer(c, cfg.optim)
    opt_c.load_state_dict(saved["opt"])
    run(c, opt_c, range(5, 8))
    for (name, pa), pc in zip(a.named_parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pc), name


def test_standalone_kfac_is_the_preconditioner_then_sgd():
    a, b = mlp(), mlp()
    x, y = data("mlp")
    opt = KFAC(a, lr=0.2, momentum=0.9, damping=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    kfac_b = KFACPreconditioner(b, damping=0.01)
    nn.functional.cross_entropy(a(x), y).backward()
    opt.step()
    nn.functional.cross_entropy(b(x), y).backward()
    kfac_b.precondition(lr=0.1)  # the lr the scheduler set
    with torch.no_grad():
        for p in b.parameters():
            p -= 0.1 * p.grad
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1) and scheduler.get_last_lr() == [0.1]
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert opt.kfac.steps == 1 and set(state["preconditioners"]["kfac"]["A"]) == {"0", "2", "4"}


def test_bad_settings_are_input_errors():
    model = mlp()
    for kwargs, message in [({"damping": 0.0}, "damping must be a finite number > 0"),
                            ({"fisher": "true"}, "fisher must be one of empirical, mc"),
                            ({"approx": "mean"}, "approx must be one of expand, reduce")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            KFACPreconditioner(model, **kwargs)


def test_cli_trains_with_kfac(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--optimizer", "kfac", "--steps", "40", "--out", str(out), "--quiet", "--qubits", "2",
            "--set", "model.n_embd=16", "--set", "model.block_size=8", "--set", "train.batch_size=4",
            "--set", "train.eval_every=20", "--set", "train.eval_batches=2", "--set", "data.corpus_chars=5000",
            "--set", "train.sample_chars=0", "--set", "optim.kfac_curvature_every=5"]  # fmt: skip
    assert main(argv) == 0
    rows = read_table(out / "metrics.csv")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.3
    assert 0 < rows[-1]["kfac_kl_scale"] <= 1 and rows[-1]["kfac_fallbacks"] == 0
    assert main(["train", "--resume", str(out), "--steps", "45", "--quiet", "--set", "optim.fisher=mc"]) == 2
    assert "changed config (optim.kfac.fisher)" in capsys.readouterr().err
    for flag, message in [("optim.fisher=true", "optim.kfac.fisher must be one of empirical, mc"),
                          ("optim.kfac_exclude=lm_haed", "kfac_exclude pattern(s) ['lm_haed'] match no module"),
                          ("optim.kfac_damping=0", "optim.kfac.damping must be a finite number > 0")]:  # fmt: skip
        assert main(["train", "--optimizer", "kfac", "--out", str(tmp_path / "bad"), "--set", flag, "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_mc_fisher_run_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny_config(**{"optim.name": "kfac", "optim.fisher": "mc", "optim.kfac_curvature_every": 3,
                         "optim.kfac_inverse_every": 7, "train.steps": 16, "train.eval_every": 8,
                         "train.sample_chars": 0})  # fmt: skip
    whole = train(cfg, tmp_path / "whole", progress=False)

    calls = []

    def dies_after_11_steps(*args):
        calls.append(1)
        if len(calls) > 11:  # the checkpoint of step 8 is on disk, with factors and decompositions
            raise KeyboardInterrupt
        return train_step(*args)

    monkeypatch.setattr("hybrid.train.train_step", dies_after_11_steps)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "killed", resume=True, progress=False)
    assert resumed.val_loss == whole.val_loss
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["optimizer"]["preconditioners"]["kfac"]["steps"] == 16


def test_hybrid_optimizer_refuses_a_second_owner_of_a_kfac_parameter():
    model = mlp()
    kfac = KFACPreconditioner(model)
    with pytest.raises(ValueError, match="is owned by both 'kfac' and 'other'"):
        HybridOptimizer(model, [("kfac", kfac, 0.1), ("other", KFACPreconditioner(model), 0.1)])


def adam_oracle(params, betas=(0.9, 0.99), eps=1e-8):
    """torch.optim.Adam at lr 1 on zero tensors shaped like ``params``: fed a gradient, minus the
    parameter after its step is Adam's direction for that gradient."""
    shadows = [torch.zeros_like(p, requires_grad=True) for p in params]
    adam = torch.optim.Adam(shadows, lr=1.0, betas=betas, eps=eps)

    def direction(grads):
        with torch.no_grad():
            for s, g in zip(shadows, grads, strict=True):
                s.zero_()
                s.grad = g.clone()
        adam.step()
        return [-s.detach().clone() for s in shadows]

    return direction


def test_grafted_updates_are_kfacs_direction_with_adamws_per_layer_norm():
    model = mlp(bias_last=False)
    grafted = KFACPreconditioner(model, graft=True, curvature_every=2, inverse_every=3, beta2=0.95)
    plain = KFACPreconditioner(model, curvature_every=2, inverse_every=3, kl_clip=0.0)  # same hooks, same factors
    oracle = adam_oracle(grafted.params, betas=(0.9, 0.95))
    for step in range(7):
        x, y = data("mlp", seed=step)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in grafted.params]
        grafted.precondition(lr=3e-3)
        ours = [p.grad.clone() for p in grafted.params]
        for p, g in zip(plain.params, grads, strict=True):
            p.grad.copy_(g)
        plain.precondition(lr=3e-3)
        natural = [p.grad.clone() for p in plain.params]
        adam = oracle(grads)
        for name in grafted.layers:
            idx = [i for i, owner in enumerate(grafted._owner) if owner == name]
            norm = torch.cat([adam[i].flatten() for i in idx]).norm()
            got = torch.cat([ours[i].flatten() for i in idx])
            direction = torch.cat([natural[i].flatten() for i in idx])
            torch.testing.assert_close(got.norm(), norm, rtol=1e-10, atol=0)
            torch.testing.assert_close(got, direction * (norm / direction.norm()), rtol=0, atol=1e-10 * norm.item())
        assert abs(grafted.stats()["kfac_kl_scale"] - 1) == 0  # no clip with graft
        with torch.no_grad():
            for p, u in zip(grafted.params, ours, strict=True):
                p -= 0.05 * u


def test_adam_steps_are_adamw_with_factors_every_step_then_kfac_starts():
    a = mlp()
    b = mlp()
    opt = KFAC(a, lr=0.01, graft=True, adam_steps=4, curvature_every=10, inverse_every=10)
    reference = torch.optim.Adam(b.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    kfac = opt.kfac
    seen = []
    for step in range(6):
        x, y = data("mlp", seed=step)
        for model, optimizer in ((a, opt), (b, reference)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        A = kfac.factors()["2"][0].clone()
        seen.append(A)
        if step < 4:  # AdamW's steps, and the factors take every batch
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                torch.testing.assert_close(pa, pb, atol=1e-10, rtol=0)
            assert not kfac._decomposed
            assert step == 0 or not torch.equal(A, seen[-2])
    assert torch.equal(seen[4], seen[3]) and torch.equal(seen[5], seen[4])  # step 4, 5: not curvature steps
    QA, lA = kfac._decomposed["2"]["QA"], kfac._decomposed["2"]["lA"]  # decomposed when K-FAC began (step 4)
    torch.testing.assert_close(QA @ torch.diag(lA) @ QA.T, seen[3], atol=1e-12, rtol=0)
    assert max((pa - pb).abs().max() for pa, pb in zip(a.parameters(), b.parameters(), strict=True)) > 1e-4


def test_graft_and_adam_steps_round_trip_continues_the_same_trajectory():
    settings = {"lr": 0.01, "momentum": 0.9, "graft": True, "adam_steps": 3, "curvature_every": 2, "inverse_every": 3}

    def run(model, opt, steps):
        for step in steps:
            x, y = data("mlp", seed=step)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    a = mlp()
    opt_a = KFAC(a, **settings)
    run(a, opt_a, range(2))  # inside the Adam phase
    buffer = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buffer)
    run(a, opt_a, range(2, 9))
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(5)
    b = nn.Sequential(nn.Linear(5, 6), nn.ReLU(inplace=True), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, V)).double()
    b.load_state_dict(saved["model"])
    opt_b = KFAC(b, **settings)
    opt_b.load_state_dict(saved["opt"])
    run(b, opt_b, range(2, 9))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grafted_kfac_trains_a_tiny_gpt_without_nan(seed):
    torch.manual_seed(seed)
    model = HybridGPT(ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum="none"), V)
    opt = KFAC(model, lr=3e-3, graft=True, adam_steps=20)
    rest = [p for p in model.parameters() if all(p is not q for q in opt.kfac.params)]
    adamw = torch.optim.AdamW(rest, lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(200):
        x = torch.randint(0, V, (4, 6), generator=g)
        loss = nn.functional.cross_entropy(model(x).reshape(-1, V), ((x + 1) % V).reshape(-1))
        model.zero_grad()
        loss.backward()
        opt.step()
        adamw.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])


def test_graft_and_adam_steps_settings_are_validated():
    settings = KFACSettings(graft=True, adam_steps=5, beta2=0.9).validate()
    kfac = KFACPreconditioner(mlp(), settings)
    assert kfac.graft and kfac.adam_steps == 5 and kfac.betas == (0.9, 0.9)
    for bad, message in [({"adam_steps": -1}, "adam_steps"), ({"beta1": 1.0}, "beta1"), ({"eps": -1e-8}, "eps"),
                         ({"graft": 1}, "graft")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            KFACSettings(**bad).validate()
