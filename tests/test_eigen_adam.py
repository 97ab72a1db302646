"""Tests for hybrid/optim/eigen_adam.py: AdamW with identity bases, AdamW on rotated parameters with fixed
bases, moments carried across a basis refresh (by hand), exact resume, and no NaN at the defaults."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from hybrid.config import ModelConfig
from hybrid.errors import InputError
from hybrid.models import HybridGPT
from hybrid.optim.eigen_adam import EigenAdamKFAC, EigenAdamPreconditioner, EigenAdamSettings, carry_moments

pytestmark = pytest.mark.usefixtures("one_thread")

V = 7
NEVER = 10**9  # basis_every that never refreshes: identity bases


def mlp(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6, bias=bias), nn.Tanh(), nn.Linear(6, 4, bias=bias), nn.Tanh(),
                         nn.Linear(4, V, bias=bias)).double()  # fmt: skip


def batch(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randint(0, V, (9,), generator=g)


def backward(model, step):
    x, y = batch(step)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()


def torch_adamw(model, lr, betas, eps, weight_decay):
    """The oracle: AdamW with decay on matrices, none on biases (as ``parameter_groups``)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def test_identity_bases_are_torch_adamw_step_for_step():
    ours, reference = mlp(), mlp()
    settings = {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.1}
    optimizer = EigenAdamKFAC(ours, lr=0.05, basis_every=NEVER, curvature_every=1, **settings)
    oracle = torch_adamw(reference, 0.05, (0.8, 0.95), 1e-6, 0.1)
    for step in range(12):
        for model, opt in ((ours, optimizer), (reference, oracle)):
            backward(model, step)
            opt.step()
        for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-10, rtol=0)
    assert not optimizer.eigen_adam.bases and optimizer.eigen_adam.A  # factors gathered, never used
    assert (ours[0].weight - mlp()[0].weight).abs().max() > 0.1  # it moved


def random_orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("bias, weight_decay", [(True, 0.0), (False, 0.1)])
def test_fixed_bases_are_adamw_on_the_rotated_parameters(bias, weight_decay):
    """With fixed bases, eigenbasis Adam on [W | b] is AdamW on W' = QG^T [W | b] QA. (Decay acts on W
    alone, so with biases the rotated oracle holds without decay.)"""
    ours, reference = mlp(bias), mlp(bias)
    optimizer = EigenAdamKFAC(ours, lr=0.05, basis_every=NEVER, weight_decay=weight_decay, beta2=0.95)
    pc = optimizer.eigen_adam
    rotated, bases = {}, {}
    for i, (name, layer) in enumerate(pc.layers.items()):
        QA = random_orthogonal(layer.in_features + bias, seed=2 * i)
        QG = random_orthogonal(layer.out_features, seed=2 * i + 1)
        pc.set_basis(name, QA, QG)
        full = torch.cat([layer.weight, layer.bias[:, None]], 1) if bias else layer.weight  # (d_out, d_a)
        rotated[name] = (QG.T @ full.detach() @ QA).requires_grad_()
        bases[name] = (QA, QG)
    oracle = torch.optim.AdamW(rotated.values(), lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)

    def unrotated():  # {parameter name: tensor} of the reference model from the rotated leaves
        params = {}
        for name, layer in pc.layers.items():
            QA, QG = bases[name]
            full = QG @ rotated[name] @ QA.T  # (d_out, d_a)
            params[f"{name}.weight"] = full[:, : layer.in_features]
            if bias:
                params[f"{name}.bias"] = full[:, layer.in_features]
        return params

    for step in range(10):
        backward(ours, step)
        optimizer.step()
        x, y = batch(step)
        oracle.zero_grad()
        nn.functional.cross_entropy(functional_call(reference, unrotated(), (x,)), y).backward()
        oracle.step()
        expected = unrotated()
        for name, p in ours.named_parameters():
            torch.testing.assert_close(p, expected[name], atol=1e-10, rtol=0)


def test_moments_are_carried_into_the_new_basis():
    """Hand-computed step 6 of a run that refreshes at steps 3 and 6: the moments are rotated from the
    step-3 basis into the step-6 one before this step's gradient enters them. Dropping m or leaving it
    in the old basis fails."""
    model = mlp()
    b1, b2, eps = 0.9, 0.95, 1e-8
    optimizer = EigenAdamKFAC(model, lr=0.05, basis_every=3, curvature_every=1, beta1=b1, beta2=b2, eps=eps,
                              weight_decay=0.0)  # fmt: skip
    pc = optimizer.eigen_adam
    for step in range(6):
        backward(model, step)
        optimizer.step()
    name, layer = "2", model[2]
    (QA3, QG3), (m3, v3) = [t.clone() for t in pc.bases[name]], [t.clone() for t in pc.moments[name]]
    backward(model, 6)
    grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).clone()  # (4, 7)
    optimizer.step()
    QA, QG = pc.bases[name]
    A, G = pc.factors()[name]
    for Q, M in ((QA, A), (QG, G)):  # the new basis diagonalizes the running factor of this step
        D = (Q.T @ M @ Q).numpy()
        np.testing.assert_allclose(np.diag(D), np.linalg.eigvalsh(M.numpy()), atol=1e-12)
        np.testing.assert_allclose(D - np.diag(np.diag(D)), 0, atol=1e-12)
    assert (QA - QA3).abs().max() > 1e-3 and (QG - QG3).abs().max() > 1e-3  # the basis did change

    RG, RA = QG.T @ QG3, QA.T @ QA3
    g = QG.T @ grad @ QA
    m = b1 * (RG @ m3 @ RA.T) + (1 - b1) * g
    v = b2 * ((RG**2) @ v3 @ (RA**2).T) + (1 - b2) * g**2
    torch.testing.assert_close(pc.moments[name][0], m, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(pc.moments[name][1], v, atol=1e-14, rtol=1e-12)
    t = 7
    direction = QG @ ((m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)) @ QA.T
    torch.testing.assert_close(layer.weight.grad, direction[:, :6], atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.bias.grad, direction[:, 6], atol=1e-12, rtol=0)
    stale = b1 * m3 + (1 - b1) * g  # the moment left in the old basis
    assert (stale - pc.moments[name][0]).abs().max() > 1e-3 and ((1 - b1) * g - m).abs().max() > 1e-3


def test_a_signed_permutation_of_the_basis_changes_nothing():
    """SOAP's rule for v (keep it, permuted along with the eigenvectors) is ours on a signed permutation."""
    m, v = torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64)
    PG = torch.eye(3, dtype=torch.float64)[[2, 0, 1]] * torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)[:, None]
    PA = torch.eye(4, dtype=torch.float64)[[1, 3, 0, 2]] * -1
    m2, v2 = carry_moments(m, v, PG, PA)
    torch.testing.assert_close(v2, v[[2, 0, 1]][:, [1, 3, 0, 2]], atol=0, rtol=0)
    torch.testing.assert_close(m2.abs(), m[[2, 0, 1]][:, [1, 3, 0, 2]].abs(), atol=0, rtol=0)

    def run(permute_at):
        model = mlp()
        optimizer = EigenAdamKFAC(model, lr=0.05, basis_every=NEVER)
        pc = optimizer.eigen_adam
        for name, layer in pc.layers.items():
            pc.set_basis(name, random_orthogonal(layer.in_features + 1, 0), random_orthogonal(layer.out_features, 1))
        for step in range(6):
            if step == permute_at:
                for name, (QA, QG) in list(pc.bases.items()):
                    pc.set_basis(name, -QA.flip(1), QG.roll(1, dims=1))
            backward(model, step)
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    for p, q in zip(run(None), run(3), strict=True):
        torch.testing.assert_close(p, q, atol=1e-13, rtol=0)


def gpt(seed):
    torch.manual_seed(seed)
    return HybridGPT(ModelConfig(n_embd=8, n_head=2, n_layer=1, block_size=6, quantum="none"), V)


def test_state_round_trip_continues_the_same_trajectory():
    def run(model, optimizer, steps):
        for step in steps:
            backward(model, step)
            optimizer.step()

    settings = {"lr": 0.05, "basis_every": 3, "curvature_every": 2, "weight_decay": 0.1}
    model = mlp()
    optimizer = EigenAdamKFAC(model, **settings)
    run(model, optimizer, range(4))
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    run(model, optimizer, range(4, 11))

    resumed = mlp(seed=1)
    resumed.load_state_dict(saved_model)
    optimizer2 = EigenAdamKFAC(resumed, **settings)
    optimizer2.load_state_dict(saved)
    run(resumed, optimizer2, range(4, 11))
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="layers"):
        EigenAdamKFAC(nn.Sequential(nn.Linear(5, 6)).double()).load_state_dict(saved)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_settings_train_a_tiny_gpt_without_nan(seed):
    model = gpt(seed)
    optimizer = EigenAdamKFAC(model)  # the linear layers; AdamW on embeddings and norms
    rest = [p for p in model.parameters() if all(p is not q for q in optimizer.eigen_adam.params)]
    adamw = torch.optim.AdamW(rest, lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(200):
        x = torch.randint(0, V, (4, 6), generator=g)
        y = (x + 1) % V  # learnable: the next token is the successor
        loss = nn.functional.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        model.zero_grad()
        loss.backward()
        optimizer.step()
        adamw.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and all(torch.isfinite(p).all() for p in model.parameters())
    assert optimizer.eigen_adam.bases  # refreshed at steps 50, 100, 150
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


def test_settings_validate_and_build_the_preconditioner():
    settings = EigenAdamSettings(exclude="0", basis_every=7)
    pc = EigenAdamPreconditioner(mlp(), settings.validate())
    assert pc.basis_every == 7 and "0" in pc.excluded
    for bad in ({"beta1": 1.0}, {"basis_every": 0}, {"eps": -1.0}, {"approx": "x"}, {"weight_decay": -0.1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            EigenAdamSettings(**bad).validate()
        with pytest.raises(InputError):
            EigenAdamPreconditioner(mlp(), **bad)
