"""Property-based tests of the command line's input handling (Hypothesis).

Drawn ``hybrid train`` invocations, valid and invalid: valid ones train and leave a run folder
that resumes; invalid ones end with exit status 2, one line on stderr and no traceback, within
a few seconds, before anything is written to the run folder.
"""

import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid.cli import main

TINY = ["--quiet", "--steps", "2", "--set", "model.n_embd=8", "--set", "model.n_head=2",
        "--set", "model.block_size=4", "--set", "model.n_layer=1", "--set", "train.batch_size=2",
        "--set", "train.eval_every=1", "--set", "train.eval_batches=1", "--set", "data.corpus_chars=2000",
        "--set", "train.sample_chars=0"]  # fmt: skip

VALID = {
    "optim.lr": st.sampled_from(["1e-3", "3e-3", "0.01"]),
    "optim.beta1": st.sampled_from(["0", "0.5", "0.9"]),
    "optim.weight_decay": st.sampled_from(["0", "0.01", "0.1"]),
    "optim.name": st.sampled_from(["adamw", "hybrid", "kfac", "qng", "muon", "eigen_adam"]),
    "optim.kfac.damping": st.sampled_from(["1e-3", "0.1"]),
    "optim.qng.lr": st.sampled_from(["0.01", "0.1"]),
    "circuit.n_qubits": st.sampled_from(["1", "2"]),
    "circuit.n_layers": st.sampled_from(["1", "2"]),
    "circuit.measure": st.sampled_from(["Z", "ZZ", "all"]),
    "circuit.name": st.sampled_from(["strongly_entangling", "hardware_efficient", "data_reuploading"]),
    "model.quantum": st.sampled_from(["head", "ffn"]),
    "train.seed": st.sampled_from(["0", "7"]),
}
NON_FINITE = st.sampled_from(["nan", "inf", "-inf"])
INVALID = {
    "optim.lr": st.one_of(NON_FINITE, st.sampled_from(["0", "-1", "abc", ""])),
    "optim.beta1": st.one_of(NON_FINITE, st.sampled_from(["1", "2", "-0.1"])),
    "optim.beta2": st.one_of(NON_FINITE, st.sampled_from(["1", "1.5"])),
    "optim.weight_decay": st.one_of(NON_FINITE, st.sampled_from(["-1"])),
    "optim.grad_clip": st.one_of(NON_FINITE, st.sampled_from(["-1"])),
    "optim.min_lr_ratio": st.sampled_from(["nan", "2", "-1"]),
    "optim.name": st.sampled_from(["sgd", "", "HYBRID"]),
    "optim.kfac.damping": st.one_of(NON_FINITE, st.sampled_from(["0", "-1e-3"])),
    "optim.kfac.curvature_every": st.sampled_from(["0", "-1", "2.5"]),
    "optim.qng.lr": st.one_of(NON_FINITE, st.sampled_from(["0"])),
    "optim.qng.approx": st.sampled_from(["kfac", "none"]),
    "circuit.n_qubits": st.sampled_from(["0", "-1", "2.5", "x"]),
    "circuit.measure": st.sampled_from(["X", "zz"]),
    "circuit.backend": st.sampled_from(["default.qbit", "fake_nowhere"]),
    "model.quantum": st.sampled_from(["tail", ""]),
    "model.dropout": st.sampled_from(["1", "-0.1", "nan"]),
    "train.batch_size": st.sampled_from(["0", "-2"]),
    "train.device": st.sampled_from(["tpu", "cuda:x"]),
    "data.val_fraction": st.sampled_from(["0", "1", "nan"]),
    "execution.shots": st.sampled_from(["-1", "0.5"]),
    "nonsense.key": st.just("1"),
    "model.n_embed": st.just("8"),
}


def run_cli(argv: list[str]) -> tuple[int, str, float]:
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue(), time.perf_counter() - start


def overrides(draw, pools: dict, keys: list[str]) -> list[str]:
    return [arg for key in keys for arg in ("--set", f"{key}={draw(pools[key])}")]


@st.composite
def invalid_invocations(draw) -> list[str]:
    valid_keys = draw(st.lists(st.sampled_from(sorted(VALID)), unique=True, max_size=3))
    bad = draw(st.sampled_from(sorted(INVALID)))
    return overrides(draw, VALID, [k for k in valid_keys if k != bad]) + overrides(draw, INVALID, [bad])


@st.composite
def valid_invocations(draw) -> list[str]:
    return overrides(draw, VALID, draw(st.lists(st.sampled_from(sorted(VALID)), unique=True, max_size=4)))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(invalid_invocations())
def test_invalid_input_is_one_line_exit_2_before_anything_is_written(flags):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err, seconds = run_cli(["train", "--out", str(out), *TINY, *flags])
        assert code == 2, (flags, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (flags, err)
        assert seconds < 5, (flags, seconds)
        assert not out.exists(), (flags, list(out.iterdir()))


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(valid_invocations())
def test_valid_input_trains_and_leaves_a_run_that_resumes(flags):
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err, _ = run_cli(["train", "--out", str(out), *TINY, *flags])
        assert code == 0, (flags, err)
        assert (out / "checkpoint.pt").is_file() and not list(out.glob(".*.tmp"))
        code, err, _ = run_cli(["train", "--resume", str(out), "--steps", "3", "--quiet"])
        assert code == 0, (flags, err)


def test_a_circuit_too_large_for_its_batch_is_refused_before_anything_compiles(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--quiet", "--qubits", "26", "--set", "circuit.measure=Z"]
    code, err, seconds = run_cli(argv)
    assert code == 2 and "strongly_entangling on 1024 inputs needs about 512.0 GiB or more" in err, err
    assert seconds < 5 and not out.exists()
