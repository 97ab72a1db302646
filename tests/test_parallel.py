"""Data-parallel training (hybrid/parallel.py, hybrid/optim/reduce.py): two gloo ranks on CPU
against one process drawing the same global batches, in float64; rank 0 alone writes; each
layer's decomposition on one rank; SIGKILL of a rank and --resume; bad world sizes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import hybrid.optim.eigen_adam
import hybrid.optim.kfac_blocks
from hybrid.checkpoint import load_checkpoint
from hybrid.cli import build_parser, main, train_overrides
from hybrid.config import Config, apply_overrides
from hybrid.train import train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
TINY = {
    "model.n_embd": 16, "model.n_head": 2, "model.n_layer": 1, "model.block_size": 8, "circuit.n_qubits": 2,
    "train.batch_size": 4, "train.steps": STEPS, "train.eval_every": 10, "train.eval_batches": 1,
    "train.sample_chars": 0, "data.corpus_chars": 5000, "optim.warmup_steps": 5,
}  # fmt: skip
# Curvature refreshed often enough that 20 steps reduce factors, decompose and refresh metrics several times;
# the QNG metric on a subsample (12 of the 32 circuit inputs), so the draw spans both ranks' rows.
OPTIMIZERS = {
    "adamw": {},
    "kfac": {"optim.kfac.fisher": "mc", "optim.kfac.curvature_every": 2, "optim.kfac.inverse_every": 4},
    "qng": {"optim.qng.metric_samples": 12},
    "hybrid": {"optim.kfac.curvature_every": 3, "optim.kfac.inverse_every": 3, "optim.qng.metric_samples": 12,
               "optim.qng.curvature_every": 2},
    "muon": {},
    # factors every step: well-conditioned bases (Adam in a basis amplifies rounding where eigenvalues crowd)
    "eigen_adam": {"optim.eigen_adam.curvature_every": 1, "optim.eigen_adam.basis_every": 6},
}  # fmt: skip
# The killed run of the CLI (float32, as hybrid train runs)
CLI = ["--steps", "60", "--qubits", "2", "--batch-size", "4", "--set", "model.n_embd=16", "--set", "model.n_head=2",
       "--set", "model.n_layer=1", "--set", "model.block_size=8", "--set", "train.eval_every=10",
       "--set", "train.eval_batches=1", "--set", "data.corpus_chars=5000", "--set", "train.sample_chars=0",
       "--set", "optim.kfac.curvature_every=2", "--set", "optim.kfac.inverse_every=4"]  # fmt: skip


def config(name: str) -> Config:
    return apply_overrides(Config(), {**TINY, "optim.name": name, **OPTIMIZERS[name]})


def cli_config() -> Config:
    return apply_overrides(Config(), train_overrides(build_parser().parse_args(["train", *CLI])))


def counting(decompositions: list[int]):
    """Wrap the decomposition function of K-FAC and eigenbasis Adam to count the matrices decomposed."""
    originals = {m: m.decompose for m in (hybrid.optim.kfac_blocks, hybrid.optim.eigen_adam)}

    def make(original):
        def counted(matrices, inverse):
            decompositions.append(len(matrices))
            return original(matrices, inverse)

        return counted

    for module, original in originals.items():
        module.decompose = make(original)
    return originals


def _rank(rank: int, size: int, port: int, root: str) -> None:
    """One rank: every optimizer's float64 run, then the CLI's float32 run; decompositions counted."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    root, counts, decompositions = Path(root), {}, []
    counting(decompositions)
    torch.set_default_dtype(torch.float64)
    for name in OPTIMIZERS:
        decompositions.clear()
        out = root / name if rank == 0 else root / f"{name}-rank{rank}"  # only rank 0 may create its folder
        train(config(name), out, progress=False)
        counts[name] = sum(decompositions)
    torch.set_default_dtype(torch.float32)
    train(cli_config(), root / "cli" if rank == 0 else root / f"cli-rank{rank}", progress=False)
    (root / f"counts-{rank}.json").write_text(json.dumps(counts))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The run folders of every optimizer trained on 2 ranks (spawned once for the module)."""
    root = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank, args=(2, free_port(), str(root)), nprocs=2, join=True)
    return root


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def assert_close(a, b, where: str = "") -> None:
    """Nested dicts, lists and tensors equal to 1e-10 (absolute, and relative for large values)."""
    if isinstance(a, dict) and {"QA", "lA", "QG", "lG"} <= set(a):  # eigenvectors of close eigenvalues are
        for k in "AG":  # ill-conditioned: compare what they decompose, Q diag(l) Q^T
            assert_close(*(d[f"Q{k}"] @ torch.diag(d[f"l{k}"]).to(d[f"Q{k}"]) @ d[f"Q{k}"].T for d in (a, b)), where)
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor) and a.is_floating_point():
        # eigenbasis Adam keeps bare eigenvectors (and moments in them): as ill-conditioned as above
        tol = 1e-7 if ".eigen_adam.bases" in where or ".eigen_adam.moments" in where else 1e-10
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-10, abs=1e-10, nan_ok=True), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_two_ranks_give_one_process_parameters_and_curvature(two_ranks, tmp_path, float64, one_thread, name):
    decompositions = []
    originals = counting(decompositions)
    try:
        train(config(name), tmp_path, progress=False)
    finally:
        for module, original in originals.items():
            module.decompose = original
    one, two = load_checkpoint(tmp_path / "checkpoint.pt"), load_checkpoint(two_ranks / name / "checkpoint.pt")
    assert one["step"] == two["step"] == STEPS and two["world_size"] == 2
    assert_close(one["model"], two["model"], "model")
    # the optimizer state: K-FAC's A, G and decompositions, QNG's metrics, Adam/Muon moments
    assert_close(one["optimizer"], two["optimizer"], "optimizer")
    if name in ("kfac", "hybrid"):
        assert one["optimizer"]["preconditioners"]["kfac"]["A"]
    if name in ("qng", "hybrid"):
        assert one["optimizer"]["preconditioners"]["qng"]["metrics"]
    # each layer's decomposition on exactly one rank: the ranks together decompose what one process does
    ranks = [json.loads((two_ranks / f"counts-{r}.json").read_text())[name] for r in (0, 1)]
    assert sum(ranks) == sum(decompositions)
    if name in ("kfac", "hybrid", "eigen_adam"):
        assert min(ranks) > 0 and sum(decompositions) > 0
    # rank 1 wrote nothing
    assert not (two_ranks / f"{name}-rank1").exists()


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_sigkilled_rank_resumes_to_the_uninterrupted_parameters(two_ranks, tmp_path):
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hybrid", "train", "--nproc", "2", "--out", str(killed),
                             "--quiet", *CLI], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline, victim = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoint.pt").exists() and load_checkpoint(killed / "checkpoint.pt")["step"] >= 20:
            ranks = [p for p in _descendants(proc.pid) if b"hybrid" in Path(f"/proc/{p}/cmdline").read_bytes()
                     and b"torch.distributed.run" not in Path(f"/proc/{p}/cmdline").read_bytes()]  # fmt: skip
            victim = ranks[-1]
            os.kill(victim, signal.SIGKILL)  # one rank; torchrun takes the other down
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert victim is not None and proc.returncode != 0, err.decode()[-2000:]
    assert 20 <= load_checkpoint(killed / "checkpoint.pt")["step"] < 60
    resumed = subprocess.run([sys.executable, "-m", "hybrid", "train", "--nproc", "2", "--resume", str(killed),
                              "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("run folder:") == 1  # rank 0 alone prints
    a, b = load_checkpoint(killed / "checkpoint.pt"), load_checkpoint(two_ranks / "cli" / "checkpoint.pt")
    assert a["step"] == b["step"] == 60
    for name in b["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--nproc", "8", "--batch-size", "4"], "fewer than one sequence"),
        (["--nproc", "3", "--batch-size", "4"], "does not split evenly"),
        (["--nproc", "2", "--backend", "qiskit.aer"], "simulators only"),
        (["--nproc", "2", "--optimizer", "hybrid", "--set", "optim.qng.metric=qnspsa"], "qnspsa"),
        (["--nproc", "0"], "--nproc"),
    ],
)
def test_bad_world_sizes_end_in_one_line_before_training(tmp_path, capsys, flags, says):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err
    assert not out.exists()
