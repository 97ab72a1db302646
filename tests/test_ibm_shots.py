"""Tests for hybrid/ibm/shots.py and the sampling path of QuantumLayer: parameter-shift
gradients against the exact simulator, exactly (exact estimator) and within 3 standard errors
(sampled, fake device without noise); Aer noise of a fake device; one job per forward."""

import numpy as np
import pytest
import torch

import circuits
from hybrid import InputError, QuantumLayer
from hybrid.backends import get_backend
from hybrid.ibm import LocalService, Runtime
from hybrid.ibm.jobs import ExecutionOptions
from tests.conftest import ALL_TEMPLATES
from tests.ibm_doubles import exact_estimator


def pair(circuit, backend, **kwargs):
    """A sampling layer and an exact one with the same float64 weights."""
    exact = QuantumLayer(circuit).double()
    sampled = QuantumLayer(circuit, backend, **kwargs).double()
    sampled.load_state_dict(exact.state_dict())
    return sampled, exact


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_parameter_shift_jobs_reproduce_autograd_exactly(monkeypatch, name):
    # The PUBs (angles, shifts, layout, observables) and the chain rule back to inputs and
    # weights, with the shot noise taken out: every job runs on StatevectorEstimator.
    sent = exact_estimator(monkeypatch)
    circuit = circuits.make_circuit(name, 2, 2, measure="ZZ")
    # a fake device checks the mapping of observables to the transpiled layout as well
    sampled, exact = pair(circuit, "fake_manila" if name == "hardware_efficient" else "qiskit.aer")
    x = torch.rand(2, 2, dtype=torch.float64) * 6
    probe = torch.randn(2, circuit.n_outputs, dtype=torch.float64)
    grads = []
    for layer in (sampled, exact):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        (out * probe).sum().backward()
        grads.append((out.detach(), xi.grad, layer.weights.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert len(sent) == 1 and [len(p[2].shape) for p in sent[0]] == [3, 5]  # forward + shifts, one job


def test_gradients_on_a_noiseless_fake_device_agree_within_three_standard_errors():
    circuit = circuits.HardwareEfficient(2, 1, measure="Z")
    sampled, exact = pair(circuit, "fake_manila", shots=20_000)
    runtime = Runtime(sampled.options, local=LocalService(noiseless_devices=True))
    x = (torch.rand(3, 2, dtype=torch.float64) * 3).requires_grad_(True)
    probe = torch.tensor([[1.0, 0.0], [-0.5, 0.0], [2.0, 0.0]], dtype=torch.float64)  # output 0 only:
    with runtime.active():  # then every circuit contributes one observable, all independent
        out = sampled(x)
        (out * probe).sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    ref = exact(x_ref)
    (ref * probe).sum().backward()

    result = sampled.executor.last_result
    program = sampled.program
    sd_plus, sd_minus = result.stds[1][:, 0, :, 0], result.stds[1][:, 1, :, 0]  # (N, S) of output 0
    var_jac = (sd_plus**2 + sd_minus**2) / 4  # (N, S); every angle is shifted here
    p0 = probe[:, :1].numpy() ** 2  # (N, 1)
    se_x = np.sqrt((p0 * var_jac) @ program.input_coeffs**2)  # (N, n_inputs)
    se_w = np.sqrt((p0 * var_jac).sum(0) @ program.weight_coeffs**2).reshape(program.weight_shape)
    se_out = result.stds[0]
    assert np.all(np.abs(out.detach().numpy() - ref.detach().numpy()) <= 3 * se_out)
    assert np.all(np.abs(x.grad.numpy() - x_ref.grad.numpy()) <= 3 * se_x)
    assert np.all(np.abs(sampled.weights.grad.numpy() - exact.weights.grad.numpy()) <= 3 * se_w)
    assert se_w.max() < 0.02  # many shots: the comparison is not vacuous
    assert runtime.submitted == 1


def test_aer_noise_of_a_fake_device_is_measurably_noisier():
    circuit = circuits.HardwareEfficient(3, 2, measure="ZZ")
    noisy, exact = pair(circuit, "qiskit.aer", shots=20_000, noise="fake_manila")
    clean, _ = pair(circuit, "qiskit.aer", shots=20_000)
    clean.load_state_dict(exact.state_dict())
    x = torch.rand(6, 3, dtype=torch.float64) * 3
    with torch.no_grad():
        ref, out_clean, out_noisy = exact(x), clean(x), noisy(x)
    z_clean = (out_clean - ref).abs() / torch.as_tensor(clean.executor.last_result.stds[0])
    z_noisy = (out_noisy - ref).abs() / torch.as_tensor(noisy.executor.last_result.stds[0])
    assert z_clean.max() < 4  # shot noise only: the exact values within 4 standard errors
    assert z_noisy.mean() > 5  # device noise: off by many standard errors on average
    assert out_noisy.abs().mean() < 0.95 * ref.abs().mean()  # and pulled toward 0 (decoherence)


def test_one_job_per_forward_and_none_without_autograd(monkeypatch):
    sent = exact_estimator(monkeypatch)
    layer = QuantumLayer(circuits.StronglyEntangling(2, 1), "qiskit.aer").double()
    x = torch.rand(2, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        assert layer(x).shape == (2, 5, 2)
    assert len(sent) == 1 and len(sent[0]) == 1  # evaluation: the forward PUB alone
    out = layer(x)  # the data needs no gradient: only the 6 weight angles are shifted
    assert len(sent) == 2 and sent[1][1][2].shape == (10, 2, 6, 1, 8)  # (N, +-, S, 1, P)
    out.sum().backward()
    assert len(sent) == 2  # the backward pass sends nothing
    assert layer.shots == 1024 and get_backend("qiskit.aer").exact is False


def test_bad_sampling_settings_fail_at_construction():
    circuit = circuits.StronglyEntangling(2, 1)
    with pytest.raises(InputError, match="execution.noise applies to qiskit.aer only"):
        QuantumLayer(circuit, "fake_manila", noise="fake_lima")
    with pytest.raises(InputError, match="execution.noise applies to qiskit.aer only"):
        QuantumLayer(circuit, "default.qubit", noise="fake_lima")
    with pytest.raises(InputError, match="unknown fake device 'fake_nowhere'"):
        QuantumLayer(circuit, "qiskit.aer", noise="fake_nowhere")
    with pytest.raises(InputError, match="unknown fake device 'fake_nowhere'"):
        QuantumLayer(circuit, "fake_nowhere")
    with pytest.raises(InputError, match="execution.shots must be > 0"):
        ExecutionOptions(shots=-1).validate()
