"""Tests for hybrid/cli.py: every bad input ends in one line that names the problem and the fix."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid.cli import main
from hybrid.train import train
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def fails_with(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    return err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backend", "qpu9"], "unknown backend 'qpu9'; choose one of: default.qubit"),
        (["--circuit", "spiral"], "unknown circuit 'spiral'; choose one of: data_reuploading"),
        (["--qubits", "40", "--set", "circuit.measure=Z"], "for its 40-qubit states but"),
        (["--qubits", "40"], "measure='all' on 40 qubits means 2^40 - 1 outputs; use measure='Z'"),
        (["--quantum", "tail"], "model.quantum must be one of head, ffn, none"),
        (["--set", "model.n_embed=8"], "unknown config key 'model.n_embed'"),
        (["--set", "model.n_embd"], "--set takes KEY=VALUE"),
        (["--optimizer", "sgd9"],
         "optim.name must be one of hybrid, kfac, qng, adamw, muon, muon_qng, eigen_adam, eigen_hybrid, "
         "muon_metric_adam, got 'sgd9'"),
    ],
)
def test_bad_training_flags(tmp_path, capsys, flags, message):
    fails_with(capsys, ["train", "--out", str(tmp_path / "run"), "--quiet", *flags], message)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_too_many_qubits_for_the_batch_says_how_much_memory(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path), "--qubits", "22", "--set", "circuit.measure=ZZ", "--quiet"]
    err = fails_with(capsys, argv, "on 1024 inputs needs about")
    assert "GiB" in err or "TiB" in err
    assert "use fewer qubits or a smaller batch" in err


@pytest.mark.parametrize(
    "content, message",
    [(None, "data file not found"), (b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text")],
)
def test_bad_data_files(tmp_path, capsys, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    fails_with(capsys, ["train", "--out", str(tmp_path / "run"), "--data", str(path), "--quiet"], message)


@pytest.fixture
def finished_run(tmp_path):
    train(tiny_config(**{"train.steps": 5}), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_corrupt_checkpoint(finished_run, capsys):
    data = (finished_run / "checkpoint.pt").read_bytes()
    (finished_run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    fails_with(capsys, ["sample", "--run", str(finished_run)], "is corrupt or was not written by this toolkit")
    fails_with(capsys, ["train", "--resume", str(finished_run)], "delete it and train again")


def test_foreign_checkpoint(finished_run, capsys):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, finished_run / "checkpoint.pt")
    fails_with(capsys, ["sample", "--run", str(finished_run)], "is not a checkpoint of this toolkit")


def test_unsafe_pickle_is_refused_not_executed(finished_run, capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"format": "hybrid-checkpoint/1", "x": Exploit()}, finished_run / "checkpoint.pt")
    fails_with(capsys, ["sample", "--run", str(finished_run)], "is corrupt or was not written by this toolkit")
    assert not marker.exists()


def test_resume_refuses_a_changed_config(finished_run, capsys):
    fails_with(capsys, ["train", "--resume", str(finished_run), "--qubits", "3"], "changed config (circuit.n_qubits)")


def test_new_run_refuses_to_overwrite_a_run(finished_run, capsys):
    fails_with(capsys, ["train", "--out", str(finished_run)], "already holds a run; continue it with --resume")


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hybrid.cli", "train", "--backend", "qpu9", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "Traceback" not in result.stderr and "unknown backend 'qpu9'" in result.stderr
