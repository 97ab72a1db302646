"""A SIGKILLed `hybrid train` with each optimizer of the curvature issue resumes to the exact
parameters of an uninterrupted run (the default `hybrid` optimizer: tests/test_train.py)."""

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

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "120", "--qubits", "2", "--set", "model.n_embd=16", "--set", "model.n_head=2",
        "--set", "model.n_layer=1", "--set", "model.block_size=8", "--set", "train.batch_size=4",
        "--set", "train.eval_every=10", "--set", "train.eval_batches=1", "--set", "data.corpus_chars=5000",
        "--set", "train.sample_chars=0", "--set", "optim.eigen_adam.basis_every=20",
        "--set", "optim.eigen_adam.curvature_every=5", "--set", "optim.metric_adam.curvature_every=5"]  # fmt: skip
NEW = [
    ["--optimizer", "muon"],
    ["--optimizer", "muon_qng", "--set", "optim.qng.momentum=0.9"],
    ["--optimizer", "muon_qng", "--set", "optim.qng.metric=pullback", "--set", "optim.qng.curvature_every=3"],
    ["--optimizer", "eigen_adam"],
    ["--optimizer", "eigen_hybrid", "--set", "optim.circuit=metric_adam"],
    ["--optimizer", "kfac", "--set", "optim.kfac.graft=true", "--set", "optim.kfac.lr=3e-3",
     "--set", "optim.kfac.adam_steps=15", "--set", "optim.kfac.momentum=0.9"],
]  # fmt: skip


def steps_logged(run: Path) -> list[int]:
    if not (run / "metrics.csv").exists():
        return []
    with open(run / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("flags", NEW, ids=lambda f: "-".join(a for a in f if not a.startswith("-"))[:40])
def test_sigkilled_run_resumes_to_the_uninterrupted_parameters(tmp_path, flags):
    kill_resume_and_compare(tmp_path, [*TINY, *flags])


def kill_resume_and_compare(tmp_path: Path, flags: list[str]) -> None:
    """SIGKILL ``hybrid train`` (120 steps, rows every 10) after step 40's row, resume it, and check it
    ends with the parameters and rows of an uninterrupted run."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hybrid.cli", "train", "--out", str(killed), "--quiet",
                             *flags], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(s >= 40 for s in steps_logged(killed)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    # the kill may fall between a metrics row and its checkpoint
    assert 10 <= load_checkpoint(killed / "checkpoint.pt")["step"] < 120
    torch.set_num_threads(1)
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    assert main(["train", "--out", str(whole), "--quiet", *flags]) == 0
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(whole / "checkpoint.pt")
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert steps_logged(killed) == steps_logged(whole)
