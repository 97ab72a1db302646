"""Tests for SPSA gradients on sampling backends (hybrid/ibm/shots.py, ``execution.gradient``):
the job path against its closed form with exact expectation values, the estimator's mean
against autograd on the torch simulator, PennyLane's SPSA convention, one job per step with
the QN-SPSA metric, a SIGKILL after submission, and bad settings refused before any job."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pennylane as qml
import pytest
import torch

import circuits
from hybrid import InputError, QuantumLayer
from hybrid.backends import ExecutionConfig
from hybrid.cli import main
from hybrid.ibm import Journal, Runtime
from hybrid.ibm.shots import Gradient, rademacher, spsa_angles, spsa_jacobian
from hybrid.optim.qng import QNGPreconditioner
from hybrid.sim.statevector import simulate
from tests.ibm_doubles import TINY_FLAGS, exact_estimator
from tests.test_ibm_submit import KILLER, ROOT, events


def angle_program(program):
    """The program with every gate angle an input: f(angles) on the simulator."""
    return dataclasses.replace(program, n_inputs=program.n_angles, input_coeffs=np.eye(program.n_angles),
                               weight_coeffs=np.zeros((program.n_angles, program.n_weights)),
                               offsets=np.zeros(program.n_angles))  # fmt: skip


def f(program, angles: np.ndarray) -> np.ndarray:
    """Exact expectation values (..., n_outputs) at gate angles (..., n_angles)."""
    flat = torch.as_tensor(angles.reshape(-1, program.n_angles), dtype=torch.float64)
    weights = torch.zeros(program.weight_shape, dtype=torch.float64)
    return simulate(angle_program(program), flat, weights).numpy().reshape(*angles.shape[:-1], -1)


def test_spsa_job_equals_its_closed_form_for_fixed_directions(monkeypatch):
    sent = exact_estimator(monkeypatch)
    circuit = circuits.HardwareEfficient(2, 2)
    spsa = ExecutionConfig(gradient="spsa", resamplings=3, spsa_c=0.3)
    layer = QuantumLayer(circuit, "fake_manila", spsa).double()  # the layer carries its gradient
    program = layer.program
    assert layer.executor.gradient == Gradient("spsa", resamplings=3, c=0.3)
    x = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(4, circuit.n_outputs, dtype=torch.float64)
    torch.manual_seed(5)
    with Runtime(layer.options).active():
        (layer(x) * probe).sum().backward()
    assert len(sent) == 1 and len(sent[0]) == 2 and sent[0][1][2].shape[:3] == (4, 2, 3)  # forward, spsa (N, +-, R)

    torch.manual_seed(5)  # the same directions: (N, R, S) over every angle (all depend on x or w)
    delta = rademacher((4, 3, program.n_angles))
    angles = program.angles(x.detach().numpy(), layer.weights.detach().numpy())
    moved = f(program, spsa_angles(angles, delta, 0.3))  # (N, 2, R, n_outputs)
    jacobian = np.einsum("nro,nra->noa", (moved[:, 0] - moved[:, 1]) / 0.6, delta) / 3
    np.testing.assert_allclose(jacobian, spsa_jacobian(moved[:, 0], moved[:, 1], delta, 0.3), atol=1e-14)
    grad_angles = np.einsum("no,noa->na", probe.numpy(), jacobian)  # (N, n_angles)
    np.testing.assert_allclose(x.grad.numpy(), grad_angles @ program.input_coeffs, atol=1e-10, rtol=0)
    expected_w = (grad_angles @ program.weight_coeffs).sum(0).reshape(layer.weights.shape)
    np.testing.assert_allclose(layer.weights.grad.numpy(), expected_w, atol=1e-10, rtol=0)


def test_mean_of_spsa_vector_jacobian_products_is_autograd_within_three_standard_errors():
    circuit = circuits.StronglyEntangling(2, 2)
    layer = QuantumLayer(circuit).double()
    program = layer.program
    x = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, circuit.n_outputs, dtype=torch.float64)
    (layer(x) * probe).sum().backward()  # exact: autograd on the simulator
    exact = np.concatenate([x.grad.numpy().ravel(), layer.weights.grad.numpy().ravel()])

    # each draw: one direction per input (resamplings=1), exact values (shots 0); c small, as the
    # bias is O(c^2 S) relative for S angles moving at once (about -6% at c = 0.1 and S = 12 here)
    draws, c = 4000, 0.01
    torch.manual_seed(0)
    angles = program.angles(x.detach().numpy(), layer.weights.detach().numpy())
    delta = rademacher((draws, 3, 1, program.n_angles))
    moved = f(program, spsa_angles(np.broadcast_to(angles, (draws, 3, program.n_angles)).reshape(-1, program.n_angles),
                                   delta.reshape(-1, 1, program.n_angles), c))  # (draws * 3, 2, 1, n_outputs)
    jac = spsa_jacobian(moved[:, 0], moved[:, 1], delta.reshape(-1, 1, program.n_angles), c)
    grad_angles = np.einsum("no,noa->na", np.tile(probe.numpy(), (draws, 1)), jac).reshape(draws, 3, -1)
    per_draw = np.concatenate([(grad_angles @ program.input_coeffs).reshape(draws, -1),
                               (grad_angles @ program.weight_coeffs).sum(1)], axis=1)  # fmt: skip
    mean, stderr = per_draw.mean(0), per_draw.std(0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(mean - exact) <= 3 * stderr), (mean - exact) / stderr
    assert np.all(stderr < 0.1 * np.abs(exact).max())  # the test has power


def test_spsa_follows_pennylane_spsa_optimizer_convention():
    # PennyLane's SPSAOptimizer: g = (f(w + c_k D) - f(w - c_k D)) / (2 c_k) * D (1/D = D for +-1).
    circuit = circuits.HardwareEfficient(2, 1)
    layer = QuantumLayer(circuit).double()
    program = layer.program
    device = qml.device("default.qubit", wires=2)
    x = np.array([0.3, -0.7])

    qnode = qml.QNode(lambda w: circuit(x, w), device, interface="autograd")

    def cost(w):  # a scalar: the layer's first output
        return qnode(w)[0]

    from pennylane import numpy as pnp

    w = pnp.array(layer.weights.detach().numpy(), requires_grad=True)
    opt = qml.SPSAOptimizer(maxiter=10, c=0.2, gamma=0.0)  # c_k = 0.2
    np.random.seed(3)  # PennyLane draws its direction from numpy's global generator
    (grad,) = opt.compute_grad(cost, (w,), {})
    np.random.seed(3)
    direction = np.random.choice([-1, 1], size=w.shape)  # the direction PennyLane drew
    # ours in the weights' coordinates: the angles move by c W D, the chain rule sends back W^T
    angles = program.angles(x[None], w.numpy())
    delta = (program.weight_coeffs @ direction.ravel())[None, None]  # (1, 1, n_angles); entries 0, +-1
    moved = f(program, spsa_angles(angles, delta, 0.2))
    ours = spsa_jacobian(moved[:, 0], moved[:, 1], delta, 0.2)[0, 0] @ program.weight_coeffs  # output 0
    np.testing.assert_allclose(ours.reshape(w.shape), np.asarray(grad), atol=1e-10, rtol=0)


def test_one_job_per_step_with_spsa_and_the_qnspsa_metric_on_a_fake_device(monkeypatch):
    sent = exact_estimator(monkeypatch)
    layer = QuantumLayer(circuits.HardwareEfficient(2, 2), "fake_manila", ExecutionConfig(gradient="spsa")).double()
    x = torch.rand(6, 2, dtype=torch.float64)
    qng = QNGPreconditioner([layer], metric="qnspsa", metric_samples=4, seed=1)
    with Runtime(layer.options).active():
        for step in range(3):
            layer.weights.grad = None
            layer(x).sum().backward()
            qng.precondition(lr=0.1)
            assert len(sent) == step + 1
            assert [tuple(p[2].shape[:-2]) for p in sent[-1]] == [(6,), (6, 2, 1), (4, 4)]  # forward, spsa, fidelity
    assert np.all(np.linalg.eigvalsh(qng.metrics[0].numpy()) >= -1e-12) and qng.refreshes == 3


def test_submit_with_spsa_and_qnspsa_sends_one_job_per_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["submit", "--backend", "fake_manila", "--out", str(out), "--quiet", *TINY_FLAGS, "--steps", "2",
                 "--gradient", "spsa", "--set", "optim.qng.metric=qnspsa"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "jobs per step: 1 (measured over 2 steps in the journal)" in printed
    assert "training step: 2 x 1 job of 12 circuits" in printed  # 4 inputs x (1 + 2)
    assert "* spsa             qnspsa" in printed
    rows = [r for r in Journal(out / "jobs.sqlite").rows() if r.purpose in ("train", "metric")]
    assert [(r.purpose, r.step) for r in rows] == [("train", 0), ("train", 1)]
    assert [p["name"] for p in rows[0].pubs] == ["forward", "spsa", "fidelity"]


def test_sigkill_after_submission_with_spsa_resumes_without_sending_a_job_twice(tmp_path):
    flags = ["--steps", "2", "--quiet", *TINY_FLAGS, "--gradient", "spsa", "--set", "optim.qng.metric=qnspsa"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["submit", "--backend", "fake_manila", "--out", str(straight), *flags]) == 0
    argv = ["submit", "--backend", "fake_manila", "--out", str(killed), *flags]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = Journal(killed / "jobs.sqlite")
    [victim] = [r for r in journal.rows() if r.purpose == "train" and r.step == 1]
    assert victim.job_id and victim.result is None

    assert main(["submit", "--resume", str(killed), "--quiet"]) == 0
    rows = journal.rows()
    assert len(events(journal, "submitted")) == len(rows) == len({r.job_id for r in rows})
    assert [e[2] for e in journal.events(victim.key)] == ["begin", "submitted", "retrieved", "finished"]
    # the same perturbations as the uninterrupted run: the same job keys, the same parameters
    assert sorted(r.key for r in rows) == sorted(r.key for r in Journal(straight / "jobs.sqlite").rows())
    from hybrid.checkpoint import load_checkpoint

    a, b = load_checkpoint(killed / "checkpoint.pt")["model"], load_checkpoint(straight / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, message", [
    (["--set", "execution.resamplings=0", "--gradient", "spsa"], "execution.resamplings must be"),
    (["--set", "execution.spsa_c=4", "--gradient", "spsa"], "execution.spsa_c must lie in (0, 3.14159]"),
    (["--set", "execution.spsa_c=0", "--gradient", "spsa"], "execution.spsa_c must lie in (0, 3.14159]"),
    (["--set", "execution.resamplings=3"], "apply to execution.gradient='spsa' only"),
    (["--gradient", "spsa", "--set", "optim.qng.metric=fisher"], "optim.qng.metric must be one of"),
    (["--gradient", "spsa", "--set", "optim.qng.fidelity_step=0"], "optim.qng.fidelity_step must lie in"),
])  # fmt: skip
def test_bad_spsa_settings_fail_in_one_line_before_any_job(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["submit", "--backend", "fake_manila", "--out", str(out), "--quiet", *TINY_FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (out / "jobs.sqlite").exists()


def test_spsa_or_the_estimator_metric_on_an_exact_simulator_is_refused():
    from hybrid.backends import ExecutionConfig

    circuit = circuits.HardwareEfficient(2, 1)
    with pytest.raises(InputError, match="drop --gradient spsa"):
        QuantumLayer(circuit, "default.qubit", ExecutionConfig(gradient="spsa"))
    with pytest.raises(InputError, match="optim.qng.metric='estimator' runs on Qiskit backends"):
        QNGPreconditioner([QuantumLayer(circuit)], metric="estimator")
    assert main(["train", "--gradient", "spsa", "--steps", "1", "--quiet", "--set", "data.corpus_chars=2000"]) == 2


def test_hybrid_train_layers_carry_the_configured_gradient():
    from hybrid.config import Config, apply_overrides
    from hybrid.models import HybridGPT

    cfg = apply_overrides(Config(), {"circuit.backend": "fake_manila", "circuit.n_qubits": 2,
                                     "execution.gradient": "spsa", "execution.resamplings": 2})  # fmt: skip
    model = HybridGPT(cfg.model, 10, cfg.circuit, cfg.execution)
    assert model.lm_head.circuit.executor.gradient == Gradient("spsa", resamplings=2, c=0.1)
