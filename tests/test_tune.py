"""Tests for hybrid/tune.py: the trial budget holds across killed and concurrent workers, pruned
trials are recorded, bad input fails before any trial, and the best config trains."""

import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from hybrid.cli import main
from hybrid.config import Config, apply_overrides
from hybrid.tables import read_table
from hybrid.train import Diverged
from hybrid.tune import open_storage, recover, tune

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model.n_embd": 16, "model.n_head": 2, "model.n_layer": 1, "model.block_size": 8, "train.batch_size": 4,
        "train.eval_every": 5, "train.eval_batches": 1, "data.corpus_chars": 3000, "train.sample_chars": 0,
        "circuit.n_qubits": 2, "optim.warmup_steps": 2}  # fmt: skip
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]


def argv(out: Path, *extra: str, steps: int = 10, trials: int = 2) -> list[str]:
    return ["tune", "--out", str(out), "--optimizers", "adamw", "--trials", str(trials), "--seeds", "1",
            "--select-seeds", "1", "--steps", str(steps), *SETS, "--quiet", *extra]  # fmt: skip


def finals_of(out: Path) -> list[list[dict]]:
    """The metrics rows of every final run on seed 1000: the selected candidate's and the defaults'."""
    runs = [read_table(path) for path in sorted((out / "final" / "adamw").glob("*/seed1000/metrics.csv"))]
    assert runs
    return runs


def trials_of(out: Path, name: str = "adamw") -> list[optuna.trial.FrozenTrial]:
    url = f"sqlite:///{out.resolve() / 'study.sqlite3'}"
    return optuna.load_study(study_name=name, storage=url).get_trials()


def worker(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hybrid.cli", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE)


def test_a_killed_worker_loses_nothing_and_the_best_config_trains(tmp_path, capsys):
    out = tmp_path / "study"
    args = argv(out, steps=40, trials=3)
    proc = worker(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill in the middle of the second trial
        if len(read_table(out / "trials" / "adamw" / "1" / "metrics.csv")) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    before = trials_of(out)
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    stamp = (out / "trials" / "adamw" / "0" / "checkpoint.pt").stat().st_mtime_ns

    assert main(args) == 0
    after = trials_of(out)
    states = [t.state for t in after]
    assert states.count(TrialState.COMPLETE) == 3 and states[1] == TrialState.FAIL
    assert after[0].value == before[0].value  # the finished trial was not run again
    assert (out / "trials" / "adamw" / "0" / "checkpoint.pt").stat().st_mtime_ns == stamp
    retry = next(t for t in after if t.user_attrs.get("retry_of") == 1)
    assert retry.params == before[1].params and retry.state == TrialState.COMPLETE
    assert "| adamw | 3/0 |" in capsys.readouterr().out
    assert (out / "best-so-far.png").read_bytes()[:4] == b"\x89PNG"
    assert [rows[-1]["step"] for rows in finals_of(out)] in ([40], [40, 40])  # the selected (and the defaults)

    run = tmp_path / "run"
    assert main(["train", "--config", str(out / "best-adamw.toml"), "--out", str(run), "--steps", "5", "--quiet"]) == 0
    assert read_table(run / "metrics.csv")[-1]["step"] == 5


def test_two_workers_on_one_sqlite_study_run_exactly_the_budget(tmp_path):
    out = tmp_path / "study"
    (out).mkdir()
    open_storage(f"sqlite:///{out / 'study.sqlite3'}")  # create the tables once, before the race
    procs = [worker(argv(out, trials=3)) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()
    trials = trials_of(out)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    finished = [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]
    assert len(set(finished)) == len(finished)  # workers that start together draw different params
    assert {len(rows) for rows in finals_of(out)} == {3}  # steps 0, 5, 10: trained once


def test_a_journal_file_holds_the_study(tmp_path):
    out, journal = tmp_path / "study", tmp_path / "study.log"
    assert main(argv(out, "--storage", f"journal:{journal}")) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="adamw", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and not (out / "study.sqlite3").exists()
    assert main(argv(out, "--storage", f"journal:{journal}")) == 0  # a rerun finds the budget spent
    assert len(optuna.load_study(study_name="adamw", storage=storage).get_trials()) == 2


def postgres_binaries() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3].zfill(4))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth), stopped and removed at the end."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    folder = Path(tempfile.mkdtemp(prefix="hybrid-postgres-"))
    as_user = {}
    if os.geteuid() == 0:  # initdb refuses to run as root: the cluster belongs to an unprivileged user
        names = {entry.pw_name for entry in pwd.getpwall()}
        user = pwd.getpwnam(next(name for name in ("postgres", "nobody") if name in names))
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    data, port = folder / "data", free_port()
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off")  # fmt: skip

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binaries / args[0]), *args[1:]], cwd=folder, capture_output=True, text=True,
                              timeout=60, **as_user)  # fmt: skip

    try:
        done = pg("initdb", "-D", str(data), "-U", "hybrid", "--auth=trust", "--no-locale", "-E", "UTF8", "-N")
        assert done.returncode == 0, done.stderr
        done = pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
        assert done.returncode == 0, done.stderr + (folder / "server.log").read_text()
        yield f"postgresql://hybrid@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_one_postgresql_study_run_exactly_the_budget_and_recover_a_killed_one(tmp_path, postgres_url):
    out = tmp_path / "study"
    db = open_storage(postgres_url)  # the tables once, before the race
    try:
        check_two_postgresql_workers(out, db, postgres_url)
    finally:
        db.engine.dispose()  # its connections close before the server stops


def check_two_postgresql_workers(out: Path, db, postgres_url: str) -> None:
    args = argv(out, "--storage", postgres_url, steps=40, trials=3)
    doomed, survivor = worker(args), worker(args)
    deadline, killed = time.time() + 120, None
    while killed is None and time.time() < deadline and doomed.poll() is None:  # kill it in the middle of a trial
        studies = [s.study_name for s in optuna.get_all_study_summaries(db)]
        running = optuna.load_study(study_name="adamw", storage=db).get_trials(states=(TrialState.RUNNING,)) \
            if "adamw" in studies else []  # fmt: skip
        for trial in running:
            if trial.user_attrs.get("pid") == doomed.pid:
                if len(read_table(out / "trials" / "adamw" / str(trial.number) / "metrics.csv")) >= 2:
                    os.kill(doomed.pid, signal.SIGKILL)
                    killed = trial.number
        time.sleep(0.05)
    doomed.communicate()  # reaped: a zombie would still answer kill(pid, 0)
    assert killed is not None and doomed.returncode == -signal.SIGKILL
    _, err = survivor.communicate(timeout=180)
    assert survivor.returncode == 0, err.decode()

    trials = optuna.load_study(study_name="adamw", storage=db).get_trials()
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 3  # exactly the budget
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert trials[killed].state == TrialState.FAIL  # recovered: failed and run again, once
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[killed].params
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 3  # none ran twice
    for final in finals_of(out):
        assert [r["step"] for r in final] == list(range(0, 41, 5))


def test_a_diverged_trial_counts_with_the_worst_value(tmp_path, monkeypatch):
    def diverge(cfg, out, **kwargs):
        raise Diverged("step 3: the training loss is nan; lower the learning rates")

    monkeypatch.setattr("hybrid.tune.train", diverge)
    base = apply_overrides(Config(), {**TINY, "train.steps": 10})
    rows = tune(base, ["adamw"], trials=2, seeds=1, out=tmp_path, progress=False, select_seeds=1)
    trials = trials_of(tmp_path)
    assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, math.inf)] * 2
    assert "nan" in trials[0].user_attrs["diverged"] and (tmp_path / "best.md").exists()
    assert rows[0]["finals"] == []


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_pruned_trials_are_recorded_and_stop_their_run(tmp_path):
    base = apply_overrides(Config(), {**TINY, "train.steps": 20, "train.log": "mlflow"})
    rows = tune(base, ["adamw"], trials=2, seeds=1, out=tmp_path, progress=False, pruner=AlwaysPrune(),
                select_seeds=1)
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.intermediate_values == {0: t.value} for t in trials)  # pruned at its first evaluation
    run = tmp_path / "trials" / "adamw" / "0"
    assert read_table(run / "metrics.csv")[-1]["step"] == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")  # the trial's run, stopped on purpose
    tracked = client.get_run((run / "mlflow_run_id").read_text())
    assert tracked.info.status == "KILLED" and tracked.data.tags["stopped_by"] == "pruned at step 5"
    assert rows[0]["finals"] == [] and "| adamw | 0/2 |" in (tmp_path / "best.md").read_text()


def test_a_dead_workers_running_trial_is_failed_and_enqueued_again(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="adamw")
    trial = study.ask()
    trial.suggest_float("optim.lr", 1e-3, 1e-2, log=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", int(dead.stdout))
    trial.set_user_attr("heartbeat", time.time())
    alive = study.ask()  # this process's own trial, not stale
    for key, value in {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}.items():
        alive.set_user_attr(key, value)
    assert recover(study) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.get_trials()[2].system_attrs["fixed_params"] == trial.params


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--optimizers", "adamw,sgd"], "unknown optimizer sgd; choose from hybrid, kfac"),
        (["--set", "optim.nope=1"], "unknown config key 'optim.nope'"),
        (["--storage", "postgresql://127.0.0.1:1/x"], "--storage postgresql://127.0.0.1:1/x"),
        (["--storage", "sqlite:////nonexistent/folder/s.db"], "folder exists and is writable"),
        (["--storage", "not a url"], "use an Optuna URL such as sqlite:///"),
        (["--storage", "redis://localhost/0"], "'redis://localhost/0' is not a storage URL; use an Optuna URL"),
        (["--storage", "postgresql://me:hunter2@127.0.0.1:1/x"], "--storage postgresql://me:***@127.0.0.1:1/x"),
        (["--storage", "journal:/nonexistent/folder/study.log"], "/nonexistent/folder does not exist"),
        (["--storage", "journal:"], "names no journal file; use journal:PATH"),
        (["--trials", "0"], "--trials must be an integer >= 1"),
        (["--seeds", "0"], "--seeds must be an integer >= 1"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_trial(tmp_path, capsys, extra, message):
    assert main(argv(tmp_path / "study", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "hunter2" not in err
    assert not (tmp_path / "study" / "trials").exists()
