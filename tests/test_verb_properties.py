"""Every verb's flags, drawn invalid (Hypothesis): exit status 2, one line on stderr, no
traceback, within a few seconds, and nothing written where the command would write.

``tests/test_input_properties.py`` draws ``hybrid train``'s config keys; this file draws the
flags of ``train``, ``sample``, ``sweep``, ``tune``, ``submit`` and ``jobs`` themselves.
"""

import contextlib
import io
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid.cli import main

NON_FINITE = ["nan", "inf", "-inf"]
NOT_INT = ["x", "2.5", "", "1e3"]
SEEDS = ["-1", str(2**64), str(10**30), *NOT_INT]
BAD_LOG = ["tensorbored", "mlflow,wandb", "csv;mlflow"]

# verb -> flag -> invalid values; "{out}" is the folder the command would write
BAD_FLAGS = {
    "train": {
        "--steps": ["0", "-3", *NOT_INT], "--seed": SEEDS, "--lr": [*NON_FINITE, "0", "-1e-3"],
        "--batch-size": ["0", "-1", *NOT_INT], "--qubits": ["0", "-2", "x"], "--circuit-layers": ["0", "x"],
        "--nproc": ["0", "-1", "x"], "--quantum": ["tail", ""], "--backend": ["qpu9"],
        "--circuit": ["spiral"], "--optimizer": ["sgd"], "--device": ["tpu", "cuda:x"],
        "--gradient": ["finite-difference"], "--data": ["no/such/file.txt", "shakespear"],
        "--log": BAD_LOG, "--set": ["model.n_embd", "nonsense.key=1", "data.vocab_size=10"],
    },
    "sample": {
        "--chars": ["-1", *NOT_INT], "--temperature": [*NON_FINITE, "0", "-1"], "--seed": SEEDS,
    },
    "sweep": {
        "--qubits": ["0", "2,x", "-1"], "--widths": ["0", "x", "30"], "--circuit-layers": ["0", "1,x"],
        "--seeds": ["-1", "x", str(2**64)], "--steps": ["0", "-1", *NOT_INT], "--workers": ["-1", "x"],
        "--optimizers": ["nope", "adamw,nope"], "--log": BAD_LOG, "--set": ["data.path=pydoc", "optim.lr=0"],
    },
    "tune": {
        "--trials": ["0", "-1", *NOT_INT], "--steps": ["0", *NOT_INT], "--seeds": ["0", "-1", "x"],
        "--select-seeds": ["0", "1001", "x"], "--optimizers": ["nope", "adamw,sgd"],
        "--storage": ["ftp://x", "journal:", "mysql"],
        "--log": BAD_LOG, "--set": ["optim.lr=nan", "train.seed=-1"],
    },
    "submit": {
        "--backend": ["nope", "default.qubit"], "--steps": ["0", "-1", *NOT_INT], "--shots": ["-1", "x"],
        "--timeout": ["nan", "-inf", "0", "-5"], "--max-execution-time": ["-1", "99999", "x"],
        "--seed": SEEDS, "--resilience-level": ["3", "-1"], "--optimization-level": ["4"],
        "--mode": ["stream"], "--dd": ["XZ"], "--noise": ["fake_nowhere"], "--task": ["fit"],
        "--set": ["execution.shots=-1", "train.test_batches=-1"],
    },
}
SUBMIT_BACKEND = ["--backend", "qiskit.aer"]  # a valid backend unless --backend itself is drawn


def run_cli(argv: list[str]) -> tuple[int, str, float]:
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse refuses what it cannot parse this way
            code = exit.code
    return code, err.getvalue(), time.perf_counter() - start


@st.composite
def bad_flags(draw, verb: str) -> list[str]:
    pool = BAD_FLAGS[verb]
    flags = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=2, unique=True))
    return [arg for flag in flags for arg in (flag, draw(st.sampled_from(pool[flag])))]


def assert_refused(argv: list[str], folder: Path) -> None:
    code, err, seconds = run_cli(argv)
    assert code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert seconds < 5, (argv, seconds)
    assert not folder.exists() or not any(folder.iterdir()), (argv, sorted(folder.iterdir()))


@pytest.mark.parametrize("verb", ["train", "sweep", "tune", "submit"])
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_invalid_flags_of_a_writing_verb_are_refused_before_it_writes(verb, data):
    flags = data.draw(bad_flags(verb))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        backend = SUBMIT_BACKEND if verb == "submit" and "--backend" not in flags else []
        assert_refused([verb, "--out", str(out), "--quiet", *backend, *flags], out)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished tiny training run, for ``hybrid sample``."""
    run = tmp_path_factory.mktemp("sample") / "run"
    tiny = ["--steps", "2", "--set", "model.n_embd=8", "--set", "model.n_head=2", "--set", "model.n_layer=1",
            "--set", "model.block_size=4", "--set", "train.batch_size=2", "--set", "data.corpus_chars=2000",
            "--set", "train.eval_batches=1", "--set", "train.sample_chars=0"]  # fmt: skip
    assert main(["train", "--out", str(run), "--quiet", *tiny]) == 0
    return run


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(flags=bad_flags("sample"))
def test_invalid_flags_of_sample_are_refused(run_folder, flags):
    assert_refused(["sample", "--run", str(run_folder), *flags], run_folder / "absent")


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    action=st.sampled_from(["list", "status", "fetch", "cancel", ""]),
    where=st.sampled_from(["missing", "empty", "file"]),
    ids=st.lists(st.sampled_from(["abc", "", "d1e2"]), max_size=2),
)
def test_jobs_refuses_a_folder_that_is_not_a_submit_run(action, where, ids):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if where == "empty":
            run.mkdir()
        elif where == "file":
            run.write_text("not a run folder")
        before = sorted(Path(tmp).rglob("*"))
        code, err, seconds = run_cli(["jobs", action, str(run), *ids])
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (action, where, ids, err)
        assert seconds < 5 and sorted(Path(tmp).rglob("*")) == before
