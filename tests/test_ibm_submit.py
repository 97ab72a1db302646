"""Tests for hybrid/submit.py: ``hybrid submit`` and ``hybrid jobs`` on a fake device in
local testing mode, through the same code path as hardware; a SIGKILL between submission and
use, then --resume, sends nothing twice."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.checkpoint import load_checkpoint
from hybrid.cli import main
from hybrid.ibm import Journal
from hybrid.train import train
from tests.conftest import tiny_config
from tests.ibm_doubles import TINY_FLAGS

ROOT = Path(__file__).resolve().parents[1]


def submit(out, *flags):
    return main(["submit", "--backend", "fake_manila", "--out", str(out), "--quiet", *TINY_FLAGS, *flags])


def events(journal, name):
    return [e for e in journal.events() if e[2] == name]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """``hybrid submit --backend fake_manila --steps 2 --out DIR`` (tiny model), and its stdout."""
    out = tmp_path_factory.mktemp("submit") / "run"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert submit(out, "--steps", "2") == 0
    return out, printed.getvalue()


def test_submit_trains_with_one_job_per_step_and_leaves_the_journal(two_steps):
    out, printed = two_steps
    # the default optimizer (hybrid) has QNG: step 0 sends its metric alone, later metrics ride
    assert "jobs per step: 1-2 (measured over 2 steps in the journal)" in printed.splitlines()
    assert "training step: 2 x 1 job of 52 circuits" in printed  # 4 inputs x (1 + 2 x 6 shifts)
    assert "QNG metric, first refresh: 1 x 1 job of" in printed and "1 later metric refreshes add" in printed
    journal = Journal(out / "jobs.sqlite")
    rows = journal.rows()
    train_rows = [r for r in rows if r.purpose == "train"]
    assert [r.step for r in train_rows] == [0, 1]
    assert [p["name"] for p in train_rows[0].pubs] == ["forward", "shifts"]
    assert [p["name"] for p in train_rows[1].pubs][:3] == ["forward", "shifts", "metric/0"]
    assert [(r.purpose, r.step) for r in rows if r.purpose == "metric"] == [("metric", 0)]
    assert all(r.state == "DONE" and r.result is not None and r.job_id for r in rows)
    # 2 steps, 1 metric, train+val at 0 and 2, 1 test batch at the end
    assert len(events(journal, "submitted")) == len(rows) == 2 + 1 + 4 + 1
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 2
    saved = (out / "config.toml").read_text()
    assert 'backend = "fake_manila"' in saved and "shots = 256" in saved
    assert json.loads((out / "submit.json").read_text()) == {"task": "train", "source": ""}


@pytest.mark.slow
def test_submit_with_the_hardware_defaults(tmp_path, capsys, request):
    if "slow" not in request.config.getoption("markexpr", ""):
        pytest.skip("about a minute on 2 cores; run with -m slow")
    assert main(["submit", "--backend", "fake_manila", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "training step: 2 x 1 job of 800 circuits, 819,200 circuit-shots" in printed
    assert "jobs per step: 1-2 (measured over 2 steps in the journal)" in printed


def test_jobs_lists_refreshes_and_fetches(two_steps, capsys):
    out, _ = two_steps
    journal = Journal(out / "jobs.sqlite")
    ids = [r.job_id for r in journal.rows()]
    assert main(["jobs", "list", str(out)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:3] == ["job", "id", "state"] and len(listed) == 1 + len(ids)
    assert main(["jobs", "status", str(out), ids[2]]) == 0
    assert ids[2] in capsys.readouterr().out
    assert main(["jobs", "fetch", str(out), ids[2]]) == 0
    assert "forward (4, 3), shifts (4, 2, 6, 3)" in capsys.readouterr().out  # 3 Z strings on 2 qubits
    with np.load(out / "results" / f"{ids[2]}.npz") as saved:
        assert saved["evs_1"].shape == (4, 2, 6, 3) and np.all(saved["stds_0"] > 0)
    assert main(["jobs", "fetch", str(out), "no-such-job"]) == 2
    assert "no job no-such-job in" in capsys.readouterr().err


KILLER = """
import os, signal, sys
import hybrid.ibm.runtime as runtime

wait = runtime.Runtime._wait

def wait_or_die(self, service, key, job_id):
    if key.startswith("train/1/"):  # submitted and journaled, its result not yet used
        os.kill(os.getpid(), signal.SIGKILL)
    return wait(self, service, key, job_id)

runtime.Runtime._wait = wait_or_die
from hybrid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_after_submission_then_resume_sends_nothing_twice(tmp_path, two_steps):
    killed, straight = tmp_path / "killed", two_steps[0]  # the same command, uninterrupted
    argv = ["submit", "--backend", "fake_manila", "--steps", "2", "--quiet", *TINY_FLAGS, "--out", str(killed)]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = Journal(killed / "jobs.sqlite")
    [victim] = [r for r in journal.rows() if r.purpose == "train" and r.step == 1]
    assert victim.state == "QUEUED" and victim.job_id and victim.result is None  # paid for, never used

    assert main(["submit", "--resume", str(killed), "--quiet"]) == 0
    rows = journal.rows()
    assert len(events(journal, "submitted")) == len(rows) == len({r.job_id for r in rows})
    assert [e[2] for e in journal.events(victim.key)] == ["begin", "submitted", "retrieved", "finished"]
    assert [e[2] for e in journal.events(next(r.key for r in rows if r.purpose == "train" and r.step == 0))][
        -1
    ] == "reused"
    assert all(r.state == "DONE" for r in rows)
    # and the run ends where an uninterrupted one does: same shots, same parameters
    a, b = load_checkpoint(killed / "checkpoint.pt")["model"], load_checkpoint(straight / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dry_run_prints_the_cost_and_sends_nothing(tmp_path, capsys):
    assert submit(tmp_path / "run", "--steps", "5", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert "training step: 5 x 1 job of 52 circuits, 13,312 circuit-shots" in printed
    assert "QPU minutes on the device" in printed and "jobs per step: 1" in printed
    assert not (tmp_path / "run").exists()


def test_eval_and_metric_tasks(tmp_path, capsys):
    source = tmp_path / "trained"
    shape = {"circuit.n_qubits": 2, "circuit.name": "hardware_efficient", "circuit.n_layers": 1}
    train(
        tiny_config(**{"train.steps": 3, "model.block_size": 4, "train.batch_size": 2, **shape}), source, progress=False
    )
    capsys.readouterr()
    argv = ["submit", "--backend", "fake_manila", "--from", str(source), "--quiet", "--shots", "256",
            "--set", "train.eval_batches=1"]  # fmt: skip
    assert main([*argv, "--task", "eval", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["step"] == 3 and 1 < report["val_loss"] < 6
    assert main([*argv, "--task", "metric", "--out", str(tmp_path / "metric")]) == 0
    with np.load(tmp_path / "metric" / "metric.npz") as saved:
        metric, eig = saved["metric"], saved["eigenvalues"]
    assert metric.shape == (4, 4) and np.allclose(metric, metric.T) and eig.min() > -0.05
    assert (tmp_path / "metric" / "metric.png").read_bytes()[:4] == b"\x89PNG"
    assert "metric of 4 weights from 8 inputs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--backend", "default.qubit"], "hybrid submit runs on qiskit.aer, fake_<device> or ibm_<device>"),
        (["--shots", "200000"], "circuit-shots, over IBM's 5,000,000 per job; lower execution.shots"),
        (["--max-execution-time", "1"], "over the 1 s of execution.max_execution_time"),
        (["--set", "circuit.mode=dedicated"], "execution.mode must be one of job, batch, session"),
        (["--noise", "fake_lima"], "execution.noise applies to qiskit.aer only"),
        (["--set", "circuit.n_qubits=7"], "does not fit fake_manila, which has 5 qubits"),  # before transpiling
    ],
)
def test_bad_submissions_fail_before_any_job(tmp_path, capsys, flags, message):
    argv = ["submit", "--backend", "fake_manila", "--out", str(tmp_path / "run"), "--quiet", *TINY_FLAGS]
    assert main([*argv, *flags, "--set", "model.block_size=16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "jobs.sqlite").exists()


def test_resume_refuses_changed_options_and_existing_runs(two_steps, capsys):
    out, _ = two_steps
    assert main(["submit", "--resume", str(out), "--shots", "512"]) == 2
    assert "only --steps and --timeout may change on --resume" in capsys.readouterr().err
    assert submit(out, "--steps", "2") == 2
    assert f"{out} already holds a run; continue it with --resume" in capsys.readouterr().err


def test_hybrid_train_runs_on_a_fake_device_and_refuses_hardware(tmp_path, capsys):
    cfg = tiny_config(**{
        "train.steps": 2, "circuit.backend": "fake_manila", "circuit.shots": 128, "circuit.n_qubits": 2,
        "model.block_size": 2, "train.batch_size": 2, "train.eval_batches": 1, "train.sample_chars": 0,
    })  # fmt: skip
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary.step == 2 and np.isfinite(summary.val_loss)
    assert main(["train", "--backend", "ibm_brisbane", "--out", str(tmp_path / "hw")]) == 2
    assert "use hybrid submit --backend ibm_brisbane" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["run"]


def test_readme_steps_for_ibm_hardware_are_valid_commands():
    import ast
    import inspect
    import re
    import shlex

    from qiskit_ibm_runtime import QiskitRuntimeService

    from hybrid.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## IBM Quantum hardware") :]
    section = section[: section.index("\n## ")] if "\n## " in section else section
    call = ast.parse(re.search(r"S\.(save_account\(.*?\))\"", section).group(1)).body[0].value
    keywords = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    inspect.signature(QiskitRuntimeService.save_account).bind(**keywords)  # the real keywords
    assert keywords["token"] == "<API key>" and keywords["set_as_default"] is True
    assert "chmod 600 ~/.qiskit/qiskit-ibm.json" in section and "QISKIT_IBM_TOKEN" in section
    commands = [line.split("#")[0].strip() for line in section.splitlines() if line.strip().startswith("hybrid ")]
    assert any("submit --backend ibm_" in c and "--out" in c and "--dry-run" not in c for c in commands)
    parser = build_parser()
    for command in commands:
        parser.parse_args(shlex.split(command)[1:])  # argparse exits on an unknown flag
