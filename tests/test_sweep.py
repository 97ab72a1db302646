"""Tests for hybrid/sweep.py: a 2x2x2 grid writes its table and plot, and resumes after a kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid.cli import main
from hybrid.errors import InputError
from hybrid.sweep import make_grid, sweep
from hybrid.tables import read_table
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.block_size=16",
        "--set", "train.batch_size=8", "--set", "train.eval_batches=2", "--set", "data.corpus_chars=20000",
        "--set", "circuit.measure=ZZ"]  # fmt: skip
GRID = ["--qubits", "2,3", "--circuit-layers", "1,2", "--widths", "16,32", "--steps", "20"]


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), *GRID, *TINY, "--set", "train.eval_every=5", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "hybrid.cli", *argv], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if len(read_table(out / "results.csv")) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    finished = {row["key"]: row for row in read_table(out / "results.csv")}
    assert 3 <= len(finished) < 8
    stamps = {key: (out / "runs" / key / "checkpoint.pt").stat().st_mtime_ns for key in finished}

    assert main(argv) == 0
    rows = read_table(out / "results.csv")
    assert sorted(r["key"] for r in rows) == sorted(p.key for p in make_grid([2, 3], [1, 2], [16, 32], ["adamw"], [0]))
    for key, stamp in stamps.items():  # finished runs were not trained again
        assert (out / "runs" / key / "checkpoint.pt").stat().st_mtime_ns == stamp
        assert next(r for r in rows if r["key"] == key) == finished[key]
    assert all(r["steps"] == 20 and r["params"] == r["quantum_params"] + r["classical_params"] for r in rows)
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    fits = read_table(out / "fits.csv")
    assert {(f["optimizer"], f["axis"]) for f in fits} == {("adamw", "params"), ("adamw", "compute_flops")}
    assert all(f["exponent_lo"] <= f["exponent"] <= f["exponent_hi"] for f in fits)


def test_invalid_grid_points_fail_before_any_run(tmp_path):
    with pytest.raises(InputError, match="must be a multiple of model.n_head"):
        sweep(tiny_config(), make_grid([2], [1], [16, 15], ["adamw"], [0]), tmp_path)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_resumed_sweep_must_keep_its_base_config(tmp_path, capsys):
    argv = ["sweep", "--out", str(tmp_path), "--qubits", "2", "--circuit-layers", "1", "--widths", "16",
            "--steps", "5", *TINY, "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert main([*argv[:-1], "--set", "optim.lr=0.1", "--quiet"]) == 2
    assert "holds a sweep with another base config (optim.lr)" in capsys.readouterr().err


def test_tuned_sweep_takes_each_optimizers_settings_from_its_study(tmp_path):
    from hybrid.config import Config, apply_overrides, load_config, save_config

    study = tmp_path / "study"
    study.mkdir()
    save_config(apply_overrides(Config(), {"optim.name": "adamw", "optim.lr": 7e-3}), study / "best-adamw.toml")
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--qubits", "2", "--circuit-layers", "1", "--widths", "8,16",
            "--optimizers", "adamw", "--seeds", "0", "--steps", "4", "--workers", "1", "--quiet",
            "--tuned", str(study), "--set", "model.block_size=4", "--set", "train.batch_size=2",
            "--set", "train.eval_batches=1", "--set", "data.corpus_chars=2000", "--set", "model.n_head=2"]  # fmt: skip
    assert main(argv) == 0
    saved = load_config(out / "runs" / "q2-l1-w8-adamw-s0" / "config.toml")
    assert saved.optim.lr == 7e-3
    assert main([*argv[:-12], "--tuned", str(tmp_path / "nowhere"), "--quiet"]) == 2
