"""Tests for hybrid/train.py: the run folder, the loop for every placement, exact resume."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hybrid.checkpoint import load_checkpoint
from hybrid.cli import main
from hybrid.train import load_run, resume_config, sample_text, train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_cli_default_model_lowers_validation_loss_in_60_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--steps", "60", "--out", str(out), "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "config.toml",
        "metrics.csv",
        "checkpoint.pt",
        "loss_curve.png",
        "sample.txt",
    }
    table = rows(out)
    assert {"step", "train_loss", "val_loss"} <= set(table[0])
    assert int(table[0]["step"]) == 0 and int(table[-1]["step"]) == 60
    assert float(table[-1]["val_loss"]) < float(table[0]["val_loss"]) - 0.2
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "val loss" in printed and "entropy floor 0.445" in printed


@pytest.mark.parametrize("quantum", ["head", "ffn", "none"])
def test_every_placement_trains_with_the_same_loop(tmp_path, quantum):
    summary = train(tiny_config(**{"model.quantum": quantum, "train.steps": 100}), tmp_path, progress=False)
    table = rows(tmp_path)
    assert summary.step == 100 and summary.val_loss < float(table[0]["val_loss"]) - 0.4
    model, tokenizer, cfg = load_run(tmp_path)
    text = sample_text(model, tokenizer, 30, prompt="the ")
    assert text.startswith("the ") and len(text) == 34


def _params(run):
    return load_checkpoint(run / "checkpoint.pt")["model"]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    settings = ["--steps", "160", "--optimizer", "hybrid", "--set", "train.eval_every=20",
                "--set", "train.sample_chars=0"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid.cli", "train", "--out", str(killed), "--quiet", *settings],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 600  # a loaded machine can take minutes to reach step 40
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.csv").exists() and any(int(r["step"]) >= 40 for r in rows(killed)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    # The kill may land between a metrics row and its checkpoint: resume must drop that row.
    saved = load_checkpoint(killed / "checkpoint.pt")
    step_at_kill = saved["step"]
    assert 20 <= step_at_kill < 160
    assert set(saved["optimizer"]["preconditioners"]) == {"kfac", "qng"}  # hybrid: K-FAC + QNG + AdamW

    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    uninterrupted = tmp_path / "uninterrupted"
    assert main(["train", "--out", str(uninterrupted), "--quiet", *settings]) == 0

    a, b = _params(killed), _params(uninterrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [int(r["step"]) for r in rows(killed)]
    assert steps == sorted(set(steps)) == [int(r["step"]) for r in rows(uninterrupted)]
    assert rows(killed)[-1]["val_loss"] == rows(uninterrupted)[-1]["val_loss"]


def test_resume_extends_a_finished_run(tmp_path):
    train(tiny_config(**{"train.steps": 20}), tmp_path, progress=False)
    cfg = resume_config(tmp_path)
    cfg.train.steps = 40
    assert train(cfg, tmp_path, resume=True, progress=False).step == 40
    assert [int(r["step"]) for r in rows(tmp_path)] == [0, 20, 40]


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    from hybrid.checkpoint import load_checkpoint
    from hybrid.cli import main

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--quiet", "--optimizer", "adamw", "--steps", "30", "--qubits", "2",
            "--set", "model.n_embd=16", "--set", "model.block_size=8", "--set", "train.batch_size=4",
            "--set", "train.eval_every=5", "--set", "train.eval_batches=1", "--set", "data.corpus_chars=3000",
            "--set", "train.sample_chars=0", "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=0",
            "--set", "optim.grad_clip=0"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("NaN or Inf" in err or "training loss is" in err), err
    assert err.startswith("error: step "), err
    state = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_leftover_temporary_files_of_killed_writes_are_removed_on_the_next_start(tmp_path):
    from hybrid.checkpoint import folder_lock

    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    with folder_lock(tmp_path):
        pass
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_kfac_on_a_bare_linear_layer_is_not_reported_as_tied():
    from hybrid.optim import KFAC

    KFAC(torch.nn.Linear(3, 3), lr=0.1)


def test_parameters_made_non_finite_by_an_update_never_reach_a_checkpoint(tmp_path, capsys, monkeypatch):
    from hybrid.checkpoint import load_checkpoint
    from hybrid.cli import main

    real_step = torch.optim.AdamW.step

    def poisoning_step(self, *args, **kwargs):  # finite gradients, but an update that writes Inf
        result = real_step(self, *args, **kwargs)
        if self.state and max(s["step"].item() for s in self.state.values()) >= 10:  # right before an evaluation
            for group in self.param_groups:
                group["params"][0].data.fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--quiet", "--optimizer", "adamw", "--steps", "20", "--qubits", "2",
            "--set", "model.n_embd=16", "--set", "model.block_size=8", "--set", "train.batch_size=4",
            "--set", "train.eval_every=5", "--set", "train.eval_batches=1", "--set", "data.corpus_chars=3000",
            "--set", "train.sample_chars=0"]  # fmt: skip
    assert main(argv) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 5 and all(torch.isfinite(t).all() for t in state["model"].values())
