"""Tests for hybrid/diagnostics.py and hybrid/diagnostic_plots.py against direct computation
(float64): explicit Kronecker products, ``hybrid.metric_tensor``, curvlinops' K-FAC; tracking
during training and its resume; loss slices that leave everything as they found it."""

import copy
import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from hybrid.config import Config, ModelConfig, apply_overrides
from hybrid.diagnostics import (
    SPECTRA,
    TABLE,
    Spectrum,
    adamw_spectrum,
    curvature_spectra,
    kronecker_spectrum,
    load_spectra,
    loss_slices,
    metric_spectrum,
    step_cosines,
    summarize,
    track,
)
from hybrid.diagnostics.plots import plot_slices, plot_spectra, plot_tracking
from hybrid.errors import InputError
from hybrid.models import HybridGPT
from hybrid.optim import build_optimizer
from hybrid.optim.metric import metric_tensor
from hybrid.quantum import QuantumLayer
from hybrid.tables import read_table
from hybrid.train import train, train_step
from tests.conftest import ClassesFirst, tiny_config

with warnings.catch_warnings():  # linear_operator, a curvlinops dependency, uses torch.jit.script
    warnings.simplefilter("ignore", DeprecationWarning)
    from curvlinops import KFACLinearOperator

V = 7  # vocabulary of the small models


pytestmark = pytest.mark.usefixtures("one_thread")  # thousands of tiny ops: a second thread only waits


def random_psd(n, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank or n, generator=g, dtype=torch.float64)
    return x @ x.T / (rank or n)


def gpt(quantum="head", seed=0, dropout=0.0):
    torch.manual_seed(seed)
    cfg = ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum=quantum, dropout=dropout)
    model = HybridGPT(cfg, V).double()
    for m in model.modules():  # away from the 0.02 initialization, where q/k gradients nearly vanish
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.5)
            nn.init.normal_(m.bias, std=0.1)
    return model


def batch(seed=0, size=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (size, 6), generator=g), torch.randint(0, V, (size, 6), generator=g)


def eigenvalues(matrix):
    return torch.sort(torch.linalg.eigvalsh(matrix), descending=True).values.clamp_min(0)


def optimizer_for(model, name="hybrid", **overrides):
    settings = {"optim.name": name, "optim.kfac.curvature_every": 1, "optim.kfac.inverse_every": 1,
                "optim.warmup_steps": 0, **{f"optim.{k}": v for k, v in overrides.items()}}
    return build_optimizer(model, apply_overrides(Config(), settings).optim)


# --- spectra against direct computation ------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (1, 6)])
def test_kronecker_spectrum_equals_the_explicit_product(shape):
    A, G = random_psd(shape[0], seed=1), random_psd(shape[1], seed=2)
    explicit = torch.sort(torch.linalg.eigvalsh(torch.kron(A, G)), descending=True).values
    torch.testing.assert_close(kronecker_spectrum(A, G), explicit.clamp_min(0), atol=1e-12, rtol=0)


def test_summary_statistics_by_hand():
    s = Spectrum("block", "quantum", torch.tensor([4.0, 1.0, 1e-14, 0.0], dtype=torch.float64))
    summary = s.summary(damping=1.0)
    assert summary["max"] == 4.0 and summary["rank"] == 2 and summary["size"] == 4
    assert summary["damped_condition"] == 4.0  # lambda_1 / (lambda_4 + 1): k = 4, the whole block
    assert summary["effective_dim"] == pytest.approx(4 / 5 + 1 / 2, abs=1e-12)
    assert summary["participation"] == pytest.approx(25 / 17)
    both = [s, Spectrum("w", "classical", torch.tensor([3.0], dtype=torch.float64))]
    per_kind = summarize(both, {"quantum": 1.0, "classical": 3.0})
    assert per_kind["block/effective_dim"] == summary["effective_dim"] and per_kind["w/effective_dim"] == 0.5


def test_metric_spectrum_of_a_rank_deficient_metric():
    metric = random_psd(6, rank=2, seed=3)
    spectrum = metric_spectrum(metric)
    assert spectrum.shape == (6,) and torch.all(spectrum[:-1] >= spectrum[1:])
    assert Spectrum("m", "quantum", spectrum).summary(1e-3)["rank"] == 2


@pytest.mark.parametrize("quantum", ["head", "ffn"])
def test_quantum_spectrum_equals_the_eigenvalues_of_metric_tensor(quantum):
    model, (x, y) = gpt(quantum), batch()
    spectra = curvature_spectra(model, (x, y), metric_samples=1000)  # every one of the 18 inputs
    [name] = [n for n, m in model.named_modules() if isinstance(m, QuantumLayer)]
    [quantum_spectrum] = [s for s in spectra if s.kind == "quantum"]
    assert quantum_spectrum.name == name and model.get_submodule(name).last_inputs is None  # left as found
    # directly: the inputs a training forward sends to the layer, the full metric, its eigenvalues
    layer = model.get_submodule(name)
    model.train()
    model(x)
    metric = metric_tensor(layer, layer.last_inputs, approx=None)
    assert layer.last_inputs.shape == (18, 4)
    torch.testing.assert_close(quantum_spectrum.eigenvalues, eigenvalues(metric), atol=1e-12, rtol=0)
    subsampled = [s for s in curvature_spectra(model, (x, y), metric_samples=5, seed=1) if s.kind == "quantum"]
    assert not torch.allclose(subsampled[0].eigenvalues, quantum_spectrum.eigenvalues)


def test_classical_spectrum_equals_the_explicit_kronecker_product_of_the_optimizers_factors():
    model = gpt()
    optimizer = optimizer_for(model, kfac_to_angles=True)  # its spectrum too
    train_step(model, optimizer, batch(0), grad_clip=0)
    train_step(model, optimizer, batch(1), grad_clip=0)  # running averages of two batches
    factors = optimizer.preconditioners["kfac"].factors()
    spectra = curvature_spectra(model, batch(2), optimizer)
    classical = {s.name: s for s in spectra if s.kind == "classical"}
    assert set(classical) == set(factors) and "lm_head.to_angles" in classical
    for name, (A, G) in factors.items():
        torch.testing.assert_close(classical[name].eigenvalues, eigenvalues(torch.kron(A, G)), atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(classical[name].eigenvalues, eigenvalues(torch.kron(G, A)), atol=1e-10, rtol=1e-8)


def test_fresh_classical_spectrum_equals_curvlinops_kfac_blocks():
    """Without an optimizer the factors come from this batch: curvlinops' empirical K-FAC."""
    model, (x, y) = gpt(), batch()
    spectra = {s.name: s for s in curvature_spectra(model, (x, y)) if s.kind == "classical"}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(spectra) == set(layers)
    params = [p for m in layers.values() for p in m.parameters()]
    op = KFACLinearOperator(
        ClassesFirst(model), nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="empirical",
        kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False,
    )  # fmt: skip
    dense = op @ torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    offset = 0
    for name, layer in layers.items():
        k = sum(p.numel() for p in layer.parameters())
        block = dense[offset : offset + k, offset : offset + k]
        torch.testing.assert_close(spectra[name].eigenvalues, eigenvalues(block), atol=1e-10, rtol=1e-7)
        offset += k


def test_model_without_linear_layers_has_only_quantum_spectra():
    import circuits

    layer = QuantumLayer(circuits.StronglyEntangling(3, 2)).double()
    x = torch.rand(10, 3, dtype=torch.float64)

    def loss_fn(model, data):
        return model(data).pow(2).mean()

    [s] = curvature_spectra(layer, x, loss_fn=loss_fn)
    assert s.kind == "quantum" and s.name == ""
    torch.testing.assert_close(s.eigenvalues, eigenvalues(metric_tensor(layer, x, approx=None)), atol=1e-12, rtol=0)


# --- nothing is changed by looking -----------------------------------------------------------


def snapshot(model, optimizer):
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        copy.deepcopy(optimizer.state_dict()),
    )


def assert_same(a, b):
    """Bitwise equal tensors, or equal nested dicts and lists of them, numbers and strings."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("name", ["hybrid", "qng", "kfac"])
def test_diagnostics_leave_the_training_trajectory_unchanged(name):
    """Two identical runs, one looked at by every diagnostic between its steps (curvature due
    on each step): their parameters and optimizer states stay bitwise equal. Dropout draws from
    the global RNG, which the diagnostics must leave where it was."""
    model = gpt(dropout=0.1)
    watched = copy.deepcopy(model)
    optimizer, watched_optimizer = optimizer_for(model, name), optimizer_for(watched, name)
    for step in range(3):
        if step > 0:  # step 0: no K-FAC factors yet, so curvature_spectra computes fresh ones
            torch.manual_seed(step)  # the same dropout masks for both
            train_step(watched, watched_optimizer, batch(10 + step), grad_clip=0)
            torch.manual_seed(step)
            train_step(model, optimizer, batch(10 + step), grad_clip=0)
        torch.manual_seed(100 + step)  # the diagnostics of the watched run must not move the RNG
        before = snapshot(watched, watched_optimizer)
        loss_slices(watched, batch(20 + step), watched_optimizer, [-0.1, 0.1])
        curvature_spectra(watched, batch(20 + step), watched_optimizer)  # last: nothing else clears K-FAC's hooks
        after = snapshot(watched, watched_optimizer)
        for a, b in zip(before[0], after[0], strict=True):
            assert_same(a, b)
        assert before[1] == after[1] == [None] * len(before[1])  # train_step zeroes with set_to_none
        assert_same(before[2], after[2])
    for _ in range(2):
        train_step(watched, watched_optimizer, batch(30), grad_clip=0)
    torch.manual_seed(102)
    for _ in range(2):
        train_step(model, optimizer, batch(30), grad_clip=0)
    for p, q in zip(model.parameters(), watched.parameters(), strict=True):
        assert_same(p, q)


def test_loss_slices_directions_differ_and_start_at_the_current_loss():
    model, data = gpt(), batch()
    optimizer = optimizer_for(model, "hybrid", kl_clip=0.0)
    slices = loss_slices(model, data, optimizer, np.linspace(-0.2, 0.2, 5))
    assert slices.alphas.shape == slices.gradient.shape == slices.natural.shape == (5,)
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(data[0]).reshape(-1, V), data[1].reshape(-1)).item()
    assert slices.gradient[2] == pytest.approx(loss, abs=1e-12) and slices.natural[2] == pytest.approx(loss, abs=1e-12)
    assert slices.cosine < 0.99 and not np.allclose(slices.gradient, slices.natural)
    # a small step downhill along either direction lowers the loss; uphill raises it
    assert slices.gradient[3] < loss < slices.gradient[1] and slices.natural[3] < loss < slices.natural[1]


def test_loss_slices_refuses_an_optimizer_without_preconditioners_and_bad_alphas():
    model = gpt()
    with pytest.raises(InputError, match="no preconditioner"):
        loss_slices(model, batch(), optimizer_for(model, "adamw"))
    with pytest.raises(InputError, match="alphas"):
        loss_slices(model, batch(), optimizer_for(model, "qng"), [0.0, float("nan")])
    with pytest.raises(TypeError, match="no preconditioners"):
        loss_slices(model, batch(), object())


# --- tracking over training ------------------------------------------------------------------


def diag_config(**overrides):
    return tiny_config(**{"model.n_embd": 16, "train.batch_size": 4, "train.eval_batches": 1,
                          "train.sample_chars": 0, "train.curvature_every": 2, **overrides})  # fmt: skip


def test_tracking_writes_rows_at_the_right_steps_and_spectra_to_plot(tmp_path):
    train(diag_config(**{"train.steps": 5}), tmp_path, progress=False)
    rows = read_table(tmp_path / TABLE)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]  # every 2 steps and the last one
    assert {"lm_head.circuit/damped_condition", "blocks.0.mlp.fc/effective_dim"} <= set(rows[0])
    spectra = load_spectra(tmp_path)
    assert list(spectra) == [0, 2, 4, 5]
    kinds = {s.name: s.kind for s in spectra[5]}
    assert kinds["lm_head.circuit"] == "quantum" and kinds["blocks.0.mlp.fc"] == "classical"
    fc = next(s for s in spectra[5] if s.name == "blocks.0.mlp.fc")
    assert fc.eigenvalues.shape == (17 * 64,) and fc.factors[0].shape == (17,)  # stored as a + g numbers
    assert rows[-1]["blocks.0.mlp.fc/max"] == pytest.approx(float(fc.eigenvalues[0]), rel=1e-7)


def test_tracking_off_by_default_and_a_new_run_starts_a_new_table(tmp_path):
    train(diag_config(**{"train.steps": 2}), tmp_path, progress=False)
    assert len(read_table(tmp_path / TABLE)) == 2
    train(diag_config(**{"train.steps": 2, "train.curvature_every": 0}), tmp_path, progress=False)
    assert not (tmp_path / TABLE).exists() and not list((tmp_path / SPECTRA).glob("*.pt"))
    with pytest.raises(InputError, match="curvature_every"):
        train(diag_config(**{"train.curvature_every": -1}), tmp_path / "bad", progress=False)


def test_resumed_run_keeps_appending_without_duplicates_and_the_same_trajectory(tmp_path):
    """Killed at step 5 after its checkpoint at 4 (rows 0..5 written): the resumed run drops
    row 5, replays it, and ends where an uninterrupted run ends."""
    cfg = diag_config(**{"train.steps": 6, "train.eval_every": 4, "train.curvature_every": 1})

    class Killed(Exception):
        pass

    def die_at_step_6(step):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, tmp_path / "run", progress=False, on_step=die_at_step_6)
    assert [r["step"] for r in read_table(tmp_path / "run" / TABLE)] == [0, 1, 2, 3, 4, 5]
    train(cfg, tmp_path / "run", resume=True, progress=False)
    train(cfg, tmp_path / "whole", progress=False)
    resumed, whole = read_table(tmp_path / "run" / TABLE), read_table(tmp_path / "whole" / TABLE)
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4, 5, 6]
    assert list(load_spectra(tmp_path / "run")) == [0, 1, 2, 3, 4, 5, 6]
    for a, b in zip(resumed, whole, strict=True):
        assert a == pytest.approx(b, rel=1e-6, nan_ok=True)
    untracked = train(diag_config(**{"train.steps": 6, "train.eval_every": 4, "train.curvature_every": 0}),
                      tmp_path / "untracked", progress=False)  # fmt: skip
    ours = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    theirs = torch.load(untracked.out / "checkpoint.pt", weights_only=True)["model"]
    for key in ours:
        assert_same(ours[key], theirs[key])


# --- plots ------------------------------------------------------------------------------------


def test_plots_return_figures_and_write_files(tmp_path):
    model, data = gpt(), batch()
    optimizer = optimizer_for(model)
    spectra = curvature_spectra(model, data, optimizer)
    track(model, data, tmp_path, 0, optimizer)
    train_step(model, optimizer, data, grad_clip=0)
    track(model, data, tmp_path, 1, optimizer, damping={"classical": 0.1, "quantum": 1e-3})
    figures = {
        "spectra.png": plot_spectra(spectra, tmp_path / "spectra.png", damping=0.1),
        "steps.svg": plot_spectra(load_spectra(tmp_path), tmp_path / "steps.svg"),
        "tracking.png": plot_tracking(tmp_path, tmp_path / "tracking.png"),
        "slices.png": plot_slices(loss_slices(model, data, optimizer), tmp_path / "slices.png"),
    }
    for file, fig in figures.items():
        assert isinstance(fig, Figure) and fig.axes and any(ax.lines for ax in fig.axes)
        assert (tmp_path / file).stat().st_size > 1000
    assert (tmp_path / "steps.svg").read_text().startswith("<?xml")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    with pytest.raises(InputError, match="curvature_every"):
        plot_tracking(tmp_path / "nothing")


def test_diagnostics_every_is_read_as_curvature_every():
    from hybrid.config import Config, apply_overrides

    assert apply_overrides(Config(), {"train.diagnostics_every": 7}).train.curvature_every == 7


# --- per-block statistics along training: damped condition, AdamW reference, step cosines, gap ----


def test_new_summary_statistics_against_numpy():
    lam = np.array([9.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.0])
    summary = Spectrum("b", "quantum", torch.tensor(lam)).summary(damping=0.1, top_k=3)
    assert summary["trace"] == pytest.approx(lam.sum(), abs=1e-12) and summary["k"] == 3
    assert [summary[f"top_{i}"] for i in (1, 2, 3)] == [9.0, 4.0, 2.0] and "top_4" not in summary
    assert summary["damped_condition"] == pytest.approx(9.0 / (2.0 + 0.1), abs=1e-12) and summary["damping"] == 0.1
    p = lam[lam > 0] / lam.sum()
    assert summary["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), abs=1e-12)
    assert "condition" not in summary  # never an undamped condition number
    equal = Spectrum("e", "quantum", torch.ones(4, dtype=torch.float64)).summary(damping=0.0)
    assert equal["effective_rank"] == pytest.approx(4.0) and equal["damped_condition"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="no damping for the adamw"):
        summarize([Spectrum("adamw", "adamw", torch.ones(2, dtype=torch.float64))], {"quantum": 1.0})
    carried = Spectrum("adamw", "adamw", torch.tensor([2.0, 1.0], dtype=torch.float64), damping=1.0)
    assert summarize([carried], {"quantum": 1.0})["adamw/damped_condition"] == pytest.approx(2.0 / (1.0 + 1.0))


def test_adamw_block_is_the_bias_corrected_second_moment_of_the_gradients():
    model = gpt()
    optimizer = optimizer_for(model, "adamw", beta2=0.9)
    assert float(adamw_spectrum(optimizer).eigenvalues.abs().max()) == 0.0  # no step yet: zeros
    squares = []
    for seed in range(3):
        loss = nn.functional.cross_entropy(model(batch(seed)[0]).reshape(-1, V), batch(seed)[1].reshape(-1))
        loss.backward()
        squares.append(torch.cat([p.grad.reshape(-1) ** 2 for p in model.parameters()]))
        optimizer.step()
        optimizer.zero_grad()
    b2 = 0.9
    v = (1 - b2) * (b2**2 * squares[0] + b2 * squares[1] + squares[2]) / (1 - b2**3)
    expected = torch.sort(v, descending=True).values
    block = adamw_spectrum(optimizer)
    assert block.name == block.kind == "adamw" and block.damping == pytest.approx(1e-8**2)  # eps squared
    torch.testing.assert_close(block.eigenvalues, expected, atol=1e-15, rtol=1e-10)
    [last] = [s for s in curvature_spectra(model, batch(), optimizer) if s.kind == "adamw"]
    torch.testing.assert_close(last.eigenvalues, expected, atol=1e-15, rtol=1e-10)
    with pytest.raises(TypeError, match="HybridOptimizer"):
        curvature_spectra(model, batch(), torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("name", ["hybrid", "adamw", "muon", "qng"])
def test_step_cosines_equal_those_of_a_copy_that_really_steps(name):
    """The oracle: a twin model and optimizer (the same steps so far) really take the step; the
    original is left as it was."""
    (model, optimizer), (copy_model, copy_optimizer) = [(m, optimizer_for(m, name)) for m in (gpt(), gpt())]
    for m, o in ((model, optimizer), (copy_model, copy_optimizer)):
        train_step(m, o, batch(1), grad_clip=0)  # moments and factors from one step
    blocks = {"fc": list(model.blocks[0].mlp.fc.parameters()), "circuit": [model.lm_head.circuit.weights],
              "all": list(model.parameters())}  # fmt: skip
    before = snapshot(model, optimizer)
    cosines = step_cosines(model, batch(2), optimizer, blocks)
    after = snapshot(model, optimizer)
    for a, b in zip(before, after, strict=True):
        assert_same(a, b)
    start = [p.detach().clone() for p in copy_model.parameters()]
    logits = copy_model(batch(2)[0])
    copy_optimizer.before_backward(logits)  # as train_step does
    nn.functional.cross_entropy(logits.reshape(-1, V), batch(2)[1].reshape(-1)).backward()
    grads = [p.grad.clone() for p in copy_model.parameters()]
    copy_optimizer.step()
    index = {id(p): i for i, p in enumerate(model.parameters())}
    moved = [p0 - p.detach() for p0, p in zip(start, copy_model.parameters(), strict=True)]
    for block, members in blocks.items():
        g = torch.cat([grads[index[id(p)]].reshape(-1) for p in members])
        step = torch.cat([moved[index[id(p)]].reshape(-1) for p in members])
        expected = float(g @ step / (g.norm() * step.norm()))
        assert cosines[block] == pytest.approx(expected, abs=1e-10), block
    assert -1 <= cosines["all"] <= 1 and cosines["fc"] > 0  # a descent direction


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_tracking_without_kfac_records_circuit_and_adamw_blocks_and_the_gap(tmp_path, name):
    cfg = diag_config(**{"train.steps": 4, "train.eval_every": 2, "optim.name": name})
    train(cfg, tmp_path / "tracked", progress=False)
    rows, metrics = read_table(tmp_path / "tracked" / TABLE), read_table(tmp_path / "tracked" / "metrics.csv")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert not [k for k in rows[0] if k.endswith("/condition")]
    for block in ("lm_head.circuit", "adamw"):
        assert {f"{block}/{k}" for k in ("trace", "top_1", "damped_condition", "effective_rank", "step_cosine",
                                         "damping")} <= set(rows[-1])  # fmt: skip
    assert rows[-1]["adamw/damping"] == pytest.approx(1e-8**2) and rows[-1]["adamw/trace"] > 0  # eps squared
    assert rows[-1]["lm_head.circuit/damping"] == cfg.optim.qng.damping
    assert all(-1 <= r["adamw/step_cosine"] <= 1 for r in rows[1:])
    for row, logged in zip(rows, metrics, strict=True):  # the same fixed batches as the evaluation
        assert row["step"] == logged["step"]  # (the tables keep 8 significant digits)
        assert row["train_loss"] == pytest.approx(logged["train_loss"], rel=1e-7)
        assert row["gap"] == pytest.approx(logged["val_loss"] - logged["train_loss"], abs=1e-6)
    untracked = train(diag_config(**{"train.steps": 4, "train.eval_every": 2, "optim.name": name,
                                     "train.curvature_every": 0}), tmp_path / "untracked", progress=False)  # fmt: skip
    ours = torch.load(tmp_path / "tracked" / "checkpoint.pt", weights_only=True)
    theirs = torch.load(untracked.out / "checkpoint.pt", weights_only=True)
    assert_same(ours["model"], theirs["model"])  # looking did not change the trajectory
    assert_same(ours["optimizer"], theirs["optimizer"])


@pytest.mark.parametrize("name", ["eigen_adam", "eigen_hybrid"])
def test_tracking_leaves_eigen_adams_hooks_and_trajectory_alone(tmp_path, name):
    settings = {"train.steps": 4, "train.eval_every": 2, "optim.name": name,
                "optim.eigen_adam.curvature_every": 1, "optim.eigen_adam.basis_every": 2}  # fmt: skip
    train(diag_config(**settings), tmp_path / "tracked", progress=False)
    untracked = train(diag_config(**settings, **{"train.curvature_every": 0}), tmp_path / "untracked",
                      progress=False)  # fmt: skip
    ours = torch.load(tmp_path / "tracked" / "checkpoint.pt", weights_only=True)
    theirs = torch.load(untracked.out / "checkpoint.pt", weights_only=True)
    assert_same(ours["model"], theirs["model"])  # the tracked passes reached none of eigen-Adam's factors
    assert_same(ours["optimizer"], theirs["optimizer"])
