"""Tests for hybrid/curvature.py (``hybrid curvature RUN``): the three circuit metrics and their steps
against direct computation (float64), the files it writes, its time on the default model, bad input."""

import math
import time

import numpy as np
import pytest
import torch

from hybrid.cli import main
from hybrid.config import Config, apply_overrides
from hybrid.curvature import FIGURE, METRICS_OF_A_CIRCUIT, REPORT, circuit_geometry, curvature_report
from hybrid.diagnostics import TABLE
from hybrid.models import HybridGPT, lm_logits, next_token_loss
from hybrid.optim.circuit_fisher import classical_fisher, pullback_metric
from hybrid.optim.metric import metric_tensor
from hybrid.quantum import QuantumLayer
from hybrid.tables import read_table
from hybrid.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

V = 7


def small_gpt(quantum="head"):
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), {"model.n_embd": 8, "model.n_head": 2, "model.n_layer": 1,
                                     "model.block_size": 6, "model.quantum": quantum})  # fmt: skip
    return HybridGPT(cfg.model, V).double()


def tokens(seed=0, size=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (size, 6), generator=g), torch.randint(0, V, (size, 6), generator=g)


def tracked_run(path, **overrides):
    cfg = tiny_config(**{"model.n_embd": 16, "train.batch_size": 4, "train.eval_batches": 1, "train.sample_chars": 0,
                         "train.steps": 4, "train.eval_every": 2, "train.curvature_every": 2, **overrides})  # fmt: skip
    train(cfg, path, progress=False)
    return path


# --- the circuit metrics and their steps ---------------------------------------------------------


@pytest.mark.parametrize("quantum", ["head", "ffn"])
def test_circuit_geometry_against_direct_computation(quantum):
    model, (x, y) = small_gpt(quantum), tokens()
    [(name, layer)] = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantumLayer)]
    damping = 1e-2
    [(got_name, geo)] = circuit_geometry(model, (x, y), damping).items()
    assert got_name == name and list(geo.metrics) == list(METRICS_OF_A_CIRCUIT)
    assert layer.last_inputs is None and all(p.grad is None for p in model.parameters())  # left as found
    # directly: the inputs of a training-mode pass, the loss gradient, the three metrics
    model.train()
    loss = next_token_loss(lm_logits(model, x), y)
    loss.backward()
    inputs = layer.last_inputs
    assert inputs.shape[0] == x.numel()  # one circuit input per token
    gradient = layer.weights.grad.reshape(-1)
    torch.testing.assert_close(geo.gradient, gradient, atol=1e-12, rtol=0)
    torch.testing.assert_close(geo.metrics["QFI"], 4 * metric_tensor(layer, inputs, approx=None), atol=1e-10, rtol=0)
    torch.testing.assert_close(geo.metrics["classical Fisher"], classical_fisher(layer, inputs), atol=1e-10, rtol=0)
    torch.testing.assert_close(geo.metrics["pullback"], pullback_metric(model, layer, x), atol=1e-10, rtol=0)
    # the steps: numpy's solve of the damped metric, the angles by arccos
    eye = np.eye(gradient.numel())
    steps = {"gradient": gradient.numpy()}
    for metric, matrix in geo.metrics.items():
        steps[metric] = np.linalg.solve(matrix.numpy() + damping * eye, gradient.numpy())
        np.testing.assert_allclose(geo.steps[metric].numpy(), steps[metric], rtol=1e-9, atol=1e-12)
    for (a, b), angle in geo.angles().items():
        u, v = steps[a], steps[b]
        assert angle == pytest.approx(math.degrees(np.arccos(u @ v / np.linalg.norm(u) / np.linalg.norm(v))), abs=1e-6)
    assert len(geo.angles()) == 6 and all(0 <= a <= 180 for a in geo.angles().values())
    assert np.linalg.eigvalsh((geo.metrics["QFI"] - geo.metrics["classical Fisher"]).numpy()).min() >= -1e-10


# --- the report --------------------------------------------------------------------------------


def test_report_writes_both_files_from_the_tracked_rows(tmp_path, capsys):
    run = tracked_run(tmp_path / "run")
    assert main(["curvature", str(run)]) == 0
    assert f"{run / REPORT}" in capsys.readouterr().out
    text = (run / REPORT).read_text()
    assert (run / FIGURE).stat().st_size > 10_000 and not list(run.glob(".*.tmp"))
    rows = read_table(run / TABLE)
    assert f"{len(rows)} tracked steps (0..4)" in text and f"![curvature]({FIGURE})" in text
    last = rows[-1]
    assert f"| 4 | {last['train_loss']:.4g} | {last['val_loss']:.4g} | {last['gap']:.4g} |" in text
    for block in ("lm_head.circuit", "adamw", "blocks.0.mlp.fc"):
        assert f"| {block} | " in text
    assert "condition number |" not in text and "### lm_head.circuit" in text
    for metric in METRICS_OF_A_CIRCUIT:
        assert f"| {metric} | " in text
    assert "| QFI vs pullback | " in text and "Braunstein-Caves" in text


def test_report_of_a_classical_model_has_no_circuit_section(tmp_path):
    run = tracked_run(tmp_path / "run", **{"model.quantum": "none", "optim.name": "adamw"})
    curvature_report(run)
    text = (run / REPORT).read_text()
    assert "no circuit metrics" in text and "| adamw | adamw |" in text and (run / FIGURE).is_file()


def test_report_of_a_default_model_run_takes_under_a_minute(tmp_path):
    run = tmp_path / "default"
    cfg = apply_overrides(Config(), {"train.steps": 2, "train.eval_every": 2, "train.curvature_every": 2,
                                     "train.sample_chars": 0, "train.eval_batches": 1})  # fmt: skip
    train(cfg, run, progress=False)
    start = time.perf_counter()
    curvature_report(run)
    assert time.perf_counter() - start < 60
    assert (run / REPORT).is_file() and (run / FIGURE).is_file()


# --- bad input: one line, exit 2 -----------------------------------------------------------------


def fails_with(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_bad_input_ends_in_one_line(tmp_path, capsys):
    fails_with(capsys, ["curvature", str(tmp_path)], "is not a run folder (it has no config.toml); pass a folder")
    fails_with(capsys, ["curvature", str(tmp_path / "missing")], "is not a run folder")
    untracked = tracked_run(tmp_path / "untracked", **{"train.curvature_every": 0})
    fails_with(capsys, ["curvature", str(untracked)],
               "has no tracked rows (diagnostics.csv); train a run with tracking on, e.g. hybrid train --set "
               "train.curvature_every=100")  # fmt: skip
    (untracked / "checkpoint.pt").unlink()
    fails_with(capsys, ["curvature", str(untracked)], "has no checkpoint.pt")
    fails_with(capsys, ["curvature", str(untracked), "--tokens", "0"], "--tokens must be at least 1")
    assert not (untracked / REPORT).exists() and not (untracked / FIGURE).exists()
