"""Tests for hybrid/optim/qng.py: PennyLane's QNGOptimizer trajectory, the damped solve, metric refresh
and subsampling, exact state round trips, and `hybrid train --optimizer qng` end to end."""

import csv
import io
import math

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

import circuits
import hybrid
import hybrid.train
from hybrid import InputError, QuantumLayer
from hybrid.checkpoint import load_checkpoint
from hybrid.cli import main
from hybrid.config import save_config
from hybrid.models import HybridGPT
from hybrid.optim import QNG, HybridOptimizer, build_optimizer, trainable_parameters
from hybrid.optim.qng import QNGPreconditioner, damped_solve
from hybrid.train import train
from tests.conftest import dense_pullback, interrupted_and_resumed, tiny_config


class NoData:
    """Two layers of RY, RZ and a CNOT, without data: QuantumLayer feeds it one unused input."""

    n_qubits, n_inputs, weight_shape, n_outputs = 2, 1, (2, 2, 2), 1

    def __call__(self, inputs, weights):
        for layer in range(2):
            for w in range(2):
                qml.RY(weights[layer, w, 0], wires=w)
                qml.RZ(weights[layer, w, 1], wires=w)
            qml.CNOT(wires=[0, 1])
        return qml.expval(qml.X(0) @ qml.Z(1) + 0.5 * qml.Y(1) - 0.3 * qml.X(0))


@pytest.mark.parametrize("approx", ["diag", "block-diag", None])
def test_twenty_steps_follow_pennylanes_qng_optimizer(approx):
    lr, damping = 0.1, 0.01
    w0 = np.random.default_rng(1).uniform(0, 2 * np.pi, NoData.weight_shape)

    qnode = qml.QNode(NoData(), qml.device("default.qubit", wires=3), interface="autograd")
    reference = qml.QNGOptimizer(stepsize=lr, lam=damping, approx=approx)
    x, w = pnp.zeros(1, requires_grad=False), pnp.array(w0, requires_grad=True)

    layer = QuantumLayer(NoData()).double()
    with torch.no_grad():
        layer.weights.copy_(torch.as_tensor(w0))
    optimizer = QNG([layer], lr=lr, damping=damping, approx=approx)
    for _ in range(20):
        x, w = reference.step(qnode, x, w)
        optimizer.zero_grad()
        layer(torch.zeros(1, 1, dtype=torch.float64)).sum().backward()
        optimizer.step()
        np.testing.assert_allclose(layer.weights.detach().numpy(), w, atol=1e-8, rtol=0)
    assert np.abs(w - w0).max() > 0.1  # it moved


def layers_with_inputs(n=16, seed=0):
    torch.manual_seed(seed)
    layers = [QuantumLayer(circuits.StronglyEntangling(2, 1)).double(), QuantumLayer(circuits.DataReuploading(2, 1))]
    probes = [torch.randn(n, layer.n_outputs, dtype=torch.float64) for layer in layers]
    inputs = [torch.rand(n, 2, dtype=torch.float64) * 6 for _ in layers]
    return layers, inputs, probes


def backward(layers, inputs, probes):
    for layer, x, probe in zip(layers, inputs, probes, strict=True):
        layer.weights.grad = None
        (layer(x) * probe).sum().backward()


def test_gradients_become_a_damped_solve_with_the_averaged_metric_of_each_layer():
    layers, inputs, probes = layers_with_inputs()
    backward(layers, inputs, probes)
    grads = [layer.weights.grad.clone() for layer in layers]
    qng = QNGPreconditioner(layers, damping=0.05, metric_samples=100)  # more samples than rows: all of them
    qng.precondition(lr=0.1)
    for layer, x, grad in zip(layers, inputs, grads, strict=True):
        metric = hybrid.metric_tensor(layer, x, "block-diag").numpy()
        expected = np.linalg.solve(metric + 0.05 * np.eye(len(metric)), grad.double().numpy().ravel())
        np.testing.assert_allclose(layer.weights.grad.double().numpy().ravel(), expected, atol=1e-10, rtol=1e-6)
    assert layers[1].weights.grad.dtype == torch.float32  # rewritten in place, dtype kept


def test_metric_is_refreshed_every_curvature_every_calls_on_a_seeded_subsample():
    layers, inputs, probes = layers_with_inputs()
    qng = QNGPreconditioner(layers, curvature_every=3, metric_samples=5, seed=7)
    generator = torch.Generator().manual_seed(7)
    seen = []
    for call in range(7):
        inputs = [x + 0.1 for x in inputs]  # new inputs every step
        backward(layers, inputs, probes)
        qng.precondition(lr=0.1)
        if call % 3 == 0:
            for layer, x, metric in zip(layers, inputs, qng.metrics, strict=True):
                rows = torch.randperm(len(x), generator=generator)[:5]
                torch.testing.assert_close(metric, hybrid.metric_tensor(layer, x[rows]), atol=1e-12, rtol=0)
        seen.append(qng.metrics)
    assert [s is seen[0] for s in seen[:3]] == [True] * 3 and seen[3] is not seen[2] and seen[6] is not seen[5]
    stats = qng.stats()["metric_cond"]
    spectra = [np.linalg.eigvalsh(m.numpy()) for m in qng.metrics]
    assert stats == pytest.approx(max(e[-1] / (max(e[0], 0) + qng.damping) for e in spectra), rel=1e-6)


def test_singular_and_ill_conditioned_metrics_never_give_nan_or_inf():
    grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    singular = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    cases = [(singular, 1e-300), (torch.zeros(3, 3, dtype=torch.float64), 1e-320),
             (torch.diag(torch.tensor([1e8, 1.0, 1e-12], dtype=torch.float64)), 1e-15),
             (torch.full((3, 3), 0.25, dtype=torch.float64), 1e-17)]  # fmt: skip
    for metric, damping in cases:
        assert torch.isfinite(damped_solve(metric, grad, damping)).all()
        assert torch.isfinite(damped_solve(metric, 1e200 * grad, damping)).all()
    # Rounding can leave a metric slightly indefinite: Cholesky fails, and the solve keeps the
    # safely positive eigenvalues only (the pseudo-inverse answer).
    indefinite = torch.diag(torch.tensor([1.0, -1e-3, 0.0], dtype=torch.float64))
    expected = torch.tensor([1 / (1 + 1e-6), 0.0, 3e6], dtype=torch.float64)
    torch.testing.assert_close(damped_solve(indefinite, grad, 1e-6), expected, rtol=1e-12, atol=0)

    # a circuit whose first RZ acts on |0>: that weight does not move the state, G is singular
    circuit = circuits.HardwareEfficient(1, 1)
    layer = QuantumLayer(circuits.HardwareEfficient(1, 1)).double()
    with torch.no_grad():
        layer.weights.zero_()
    optimizer = QNG([layer], lr=0.1, damping=1e-12)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.zeros(4, circuit.n_inputs, dtype=torch.float64)).sum().backward()
        optimizer.step()
        assert torch.isfinite(layer.weights).all()
    assert 1e10 < optimizer.stats()["metric_cond"] < math.inf  # damped: lambda_1 / (0 + 1e-12), never inf


def test_qng_state_dict_round_trip_continues_the_same_trajectory():
    def run(optimizer, layers, steps, start):
        for step in range(start, start + steps):
            torch.manual_seed(100 + step)  # the step's batch
            inputs = [torch.rand(16, 2, dtype=torch.float64) * 6 for _ in layers]
            probes = [torch.randn(16, layer.n_outputs, dtype=torch.float64) for layer in layers]
            backward(layers, inputs, probes)
            optimizer.step()

    def fresh():
        layers, _, _ = layers_with_inputs()
        layers[1].double()
        return layers, QNG(layers, lr=0.05, curvature_every=2, metric_samples=5, seed=3)

    a, opt_a = fresh()
    run(opt_a, a, 6, 0)
    b, opt_b = fresh()
    run(opt_b, b, 3, 0)
    buffer = io.BytesIO()
    torch.save({"layers": [layer.state_dict() for layer in b], "opt": opt_b.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # tensors, numbers, lists and dicts only
    c, opt_c = fresh()
    for layer, state in zip(c, saved["layers"], strict=True):
        layer.load_state_dict(state)
    opt_c.load_state_dict(saved["opt"])
    run(opt_c, c, 3, 3)
    for la, lc in zip(a, c, strict=True):
        assert torch.equal(la.weights, lc.weights)
    assert opt_c.preconditioner.calls == 6


def test_build_optimizer_gives_qng_every_circuit_weight_and_adamw_the_rest():
    cfg = tiny_config(**{"model.quantum": "ffn", "optim.name": "qng", "optim.qng_lr": 0.2})
    model = HybridGPT(cfg.model, 11, cfg.circuit)
    optimizer = build_optimizer(model, cfg.optim)
    assert isinstance(optimizer, HybridOptimizer)
    qng = optimizer.preconditioners["qng"]
    circuit_weights = [m.weights for m in model.modules() if isinstance(m, QuantumLayer)]
    assert [id(p) for p in qng.params] == [id(p) for p in circuit_weights] and len(circuit_weights) == 1
    assert optimizer.part("qng").optimizer.param_groups[0]["lr"] == 0.2
    owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert owned == set(trainable_parameters(model))
    assert (qng.damping, qng.approx, qng.curvature_every, qng.metric_samples) == (1e-3, "block-diag", 1, 64)
    with pytest.raises(InputError, match="qng needs a circuit"):
        build_optimizer(HybridGPT(tiny_config(**{"model.quantum": "none"}).model, 11), cfg.optim)


def test_bad_settings_are_input_errors():
    layer = QuantumLayer(circuits.StronglyEntangling(2, 1))
    bad = [({"damping": 0.0}, "damping must be"), ({"damping": float("nan")}, "damping must be"),
           ({"curvature_every": 0}, "curvature_every must be"), ({"metric_samples": 2.5}, "metric_samples"),
           ({"approx": "kfac"}, "approx must be")]  # fmt: skip
    for kwargs, match in bad:
        with pytest.raises(InputError, match=match):
            QNGPreconditioner([layer], **kwargs)
    with pytest.raises(InputError, match="one or more QuantumLayer"):
        QNGPreconditioner([torch.nn.Linear(2, 2)])
    with pytest.raises(InputError, match="given twice"):
        QNGPreconditioner([layer, layer])
    with pytest.raises(InputError, match="lr must be"):
        QNG([layer], lr=0)
    with pytest.raises(RuntimeError, match="training mode"):
        QNGPreconditioner([layer]).precondition(lr=0.1)  # no forward pass yet
    for key, value in [("optim.qng.damping", "0"), ("optim.qng.approx", "kfac"), ("optim.qng.metric_samples", "0")]:
        with pytest.raises(InputError, match=key):
            train(tiny_config(**{"optim.name": "qng", key: value}), "unused", progress=False)
    with pytest.raises(InputError, match="qng needs a circuit"):
        train(tiny_config(**{"optim.name": "qng", "model.quantum": "none"}), "unused", progress=False)


def test_cli_trains_with_qng_and_logs_the_metric_condition_number(tmp_path):
    config = tmp_path / "tiny.toml"
    save_config(tiny_config(**{"train.steps": 20, "optim.qng_metric_samples": 16}), config)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--optimizer", "qng", "--out", str(out), "--quiet"]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["metric_cond"] == ""  # step 0: no metric yet
    assert 1 < float(rows[-1]["metric_cond"]) < math.inf
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    state = load_checkpoint(out / "checkpoint.pt")["optimizer"]["preconditioners"]["qng"]
    assert state["calls"] == 20 and state["metrics"][0].shape == (24, 24)


def test_a_resumed_qng_run_ends_with_the_parameters_of_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny_config(**{"optim.name": "qng", "optim.qng_curvature_every": 3, "optim.qng_metric_samples": 8,
                         "train.steps": 30, "train.eval_every": 10, "train.sample_chars": 0})  # fmt: skip
    train(cfg, tmp_path / "whole", progress=False)

    interrupted_and_resumed(monkeypatch, cfg, tmp_path / "split")  # step 20's checkpoint: 21-24 are replayed

    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
    qng = [c["optimizer"]["preconditioners"]["qng"] for c in (whole, split)]
    assert qng[0]["calls"] == qng[1]["calls"] == 30 and torch.equal(qng[0]["metrics"][0], qng[1]["metrics"][0])


def test_pullback_qng_solves_with_the_dense_pullback_of_the_training_batch():
    """metric='pullback': (J^T F J + lambda I)^-1 grad, J^T F J from a dense autograd Jacobian of the logits."""
    torch.manual_seed(0)
    model = HybridGPT(hybrid.ModelConfig(quantum="head", dropout=0.0), vocab_size=11).double()
    layer = next(m for m in model.modules() if isinstance(m, QuantumLayer))
    qng = QNGPreconditioner([layer], metric="pullback", metric_samples=15, damping=1e-3, model=model)
    x, y = torch.randint(0, 11, (3, 5)), torch.randint(0, 11, (3, 5))  # metric_samples 15 = every sequence
    model.train()
    torch.nn.functional.cross_entropy(model(x).reshape(-1, 11), y.reshape(-1)).backward()
    grad = layer.weights.grad.reshape(-1).clone()
    qng.precondition(0.1)

    fisher = dense_pullback(model, layer, x)
    expected = torch.linalg.solve(fisher + 1e-3 * torch.eye(fisher.shape[0], dtype=fisher.dtype), grad)
    torch.testing.assert_close(layer.weights.grad.reshape(-1), expected, atol=1e-8, rtol=1e-8)


def test_pullback_qng_refuses_without_the_model_or_on_a_sampling_backend():
    layer = QuantumLayer(circuits.TEMPLATES["strongly_entangling"](2, 1))
    with pytest.raises(InputError, match="needs the model"):
        QNGPreconditioner([layer], metric="pullback")
    sampled = QuantumLayer(circuits.TEMPLATES["strongly_entangling"](2, 1), backend="qiskit.aer", shots=64)
    with pytest.raises(InputError, match="exact circuit Jacobian"):
        QNGPreconditioner([sampled], metric="pullback", model=torch.nn.Sequential(sampled))
