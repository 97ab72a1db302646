"""Tests for the tuning protocol of hybrid/tune.py: the defaults are trial 0, S studies x T
trials hold across a killed worker, the bracket check flags an optimum at the edge, the finals
train on fresh seeds, and the comparison statistics (time to target, bootstrap) are right."""

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hybrid.cli import main
from hybrid.comparison import bootstrap_ratio, bracket_position, mean_final, time_to_target, upper_mean
from hybrid.config import Config, apply_overrides, load_config
from hybrid.errors import InputError
from hybrid.optim.registry import PRESETS, search_space
from hybrid.tables import read_table
from hybrid.tune import FRESH_SEED, bracket_flags, defaults_of, searched_space, sobol_point, tune

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model.n_embd": 16, "model.n_head": 2, "model.n_layer": 1, "model.block_size": 8, "train.batch_size": 4,
        "train.eval_every": 5, "train.eval_batches": 1, "data.corpus_chars": 3000, "train.sample_chars": 0,
        "circuit.n_qubits": 2, "optim.warmup_steps": 2}  # fmt: skip


def study_trials(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out.resolve() / 'study.sqlite3'}").get_trials()


def test_the_defaults_are_trial_0_of_the_first_study_and_the_finals_use_fresh_seeds(tmp_path):
    base = apply_overrides(Config(), {**TINY, "train.steps": 10})
    rows = tune(base, ["adamw"], trials=2, seeds=2, out=tmp_path, progress=False, studies=2, select_seeds=2)
    first, second = study_trials(tmp_path, "adamw"), study_trials(tmp_path, "adamw-1")
    cfg = apply_overrides(base, {"optim.name": "adamw"})
    assert first[0].user_attrs["defaults"] and first[0].params == pytest.approx(defaults_of(cfg))
    assert not any(t.user_attrs.get("defaults") for t in [*first[1:], *second])
    assert rows[0]["studies"][0]["best"] <= first[0].value  # a study never reports a best worse than its start
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.sqlite3'}")
    attrs = optuna.load_study(study_name="adamw", storage=storage).user_attrs
    assert attrs["optuna_version"] == optuna.__version__ and attrs["sampler"]["kind"] == "qmc"
    assert attrs["search_space"] == {k: list(v) for k, v in search_space(cfg.optim).items()}

    tuning = {load_config(p).train.seed for p in (tmp_path / "trials").glob("*/*/config.toml")}
    finals = {load_config(p).train.seed for p in (tmp_path / "final").glob("*/*/*/config.toml")}
    assert tuning == {base.train.seed, base.train.seed + 1}  # one training seed per study
    assert finals == {base.train.seed + FRESH_SEED, base.train.seed + FRESH_SEED + 1}
    assert not tuning & finals
    text = (tmp_path / "best.md").read_text()
    assert "2 studies x 2 trials per optimizer; sampler qmc" in text and "| adamw | 4/0 |" in text
    assert "## Finals on fresh seeds" in text and "Small-scale caveat" in text


def test_the_finals_take_the_candidate_with_the_lowest_mean_plus_se_over_the_selection_seeds(tmp_path):
    base = apply_overrides(Config(), {**TINY, "train.steps": 10})
    (row,) = tune(base, ["adamw"], trials=2, seeds=1, out=tmp_path, progress=False, studies=2, select_seeds=3)
    first, second = study_trials(tmp_path, "adamw"), study_trials(tmp_path, "adamw-1")
    selection = row["selection"]
    assert selection[0]["label"] == "defaults" and selection[0]["losses"][0] == first[0].value  # reused, not rerun
    assert all(len(c["losses"]) == 3 for c in selection)  # both tuning seeds, then one more
    best_second = min(t.value for t in second)
    assert any(c["losses"][1] == best_second for c in selection)  # study 1's best, on its own seed
    for c in selection:
        assert c["score"] == pytest.approx(statistics.fmean(c["losses"]) + statistics.stdev(c["losses"]) / math.sqrt(3))
    chosen = next(c for c in selection if c["label"] == row["trial"])
    assert chosen["score"] == min(c["score"] for c in selection) <= selection[0]["score"]
    assert load_config(tmp_path / "best-adamw.toml").optim.lr == pytest.approx(chosen["params"]["optim.lr"])
    reruns = {load_config(p).train.seed for p in (tmp_path / "select").glob("adamw/*/*/config.toml")}
    assert reruns and reruns <= {base.train.seed + s for s in range(3)}  # selection seeds only, never a fresh one
    assert "## Selection on the selection seeds" in (tmp_path / "best.md").read_text()


def test_a_rerun_without_the_run_folders_reads_the_selection_and_finals_from_the_storage(tmp_path, monkeypatch):
    base = apply_overrides(Config(), {**TINY, "train.steps": 10})
    storage = f"journal:{tmp_path / 'study.log'}"  # the committed kind: a clean clone has the journal only
    first = tune(base, ["adamw"], trials=2, seeds=2, out=tmp_path / "a", storage=storage, progress=False,
                 studies=1, select_seeds=2)  # fmt: skip

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr("hybrid.tune.train", no_training)
    again = tune(base, ["adamw"], trials=2, seeds=2, out=tmp_path / "b", storage=storage, progress=False,
                 studies=1, select_seeds=2)  # fmt: skip
    for key in ("trial", "params", "selection", "finals", "defaults"):
        assert again[0][key] == first[0][key]
    assert (tmp_path / "b" / "best.md").read_text().split("## Selection")[1] == \
        (tmp_path / "a" / "best.md").read_text().split("## Selection")[1]  # fmt: skip


def test_a_config_that_fails_on_some_seeds_loses_the_selection_to_a_steady_one():
    steady, bimodal = [0.60, 0.61, 0.60, 0.61, 0.60], [0.55, 0.55, 0.55, 0.70, 0.56]
    assert statistics.fmean(bimodal) < statistics.fmean(steady)  # the lower mean ...
    assert upper_mean(bimodal) > upper_mean(steady)  # ... pays for its spread
    assert upper_mean([0.5, math.inf]) == math.inf and upper_mean([0.5]) == 0.5


def test_every_presets_defaults_lie_inside_its_search_space():
    for name in PRESETS:
        cfg = apply_overrides(Config(), {"optim.name": name})
        space = search_space(cfg.optim)
        for key, value in defaults_of(cfg).items():
            low, high, _ = space[key]
            assert low <= value <= high, f"{name}: {key}={value} outside [{low}, {high}]"


def test_sobol_points_fill_the_space_without_repeats():
    space = {"optim.lr": (1e-4, 1e-1, True), "optim.beta2": (0.9, 0.999, False)}
    points = [sobol_point(space, n, seed=3) for n in range(16)]
    assert len({tuple(p.values()) for p in points}) == 16
    assert all(1e-4 <= p["optim.lr"] <= 1e-1 and 0.9 <= p["optim.beta2"] <= 0.999 for p in points)
    # a (0, m, 2)-net: each of the 4 x 4 cells of the unit square (log lr x beta2) holds exactly one point
    cells = {(int(4 * bracket_position(p["optim.lr"], 1e-4, 1e-1, True)),
              int(4 * bracket_position(p["optim.beta2"], 0.9, 0.999, False))) for p in points}  # fmt: skip
    assert len(cells) == 16
    assert sobol_point(space, 5, seed=3) == points[5]  # reproducible from the trial number alone


@pytest.mark.filterwarnings("ignore:Fixed parameter optim.lr with value 0.003 is out of range")
def test_the_bracket_check_flags_an_optimum_at_the_edge(tmp_path, monkeypatch):
    space = {"optim.lr": (1e-5, 2e-5, True)}  # far below the default 3e-3: the best is the defaults, above it
    monkeypatch.setattr("hybrid.tune.search_space", lambda optim: space)
    base = apply_overrides(Config(), {**TINY, "train.steps": 10})
    rows = tune(base, ["adamw"], trials=2, seeds=1, out=tmp_path, progress=False, select_seeds=1)
    assert rows[0]["params"] == {"optim.lr": pytest.approx(3e-3)}
    assert bracket_flags(rows[0]["params"], space) == {"optim.lr": "high edge"}
    assert "| adamw | optim.lr | 1e-05 to 2e-05 | log | 0.003 | 0.003 |" in (tmp_path / "best.md").read_text()
    assert "**high edge: widen**" in (tmp_path / "best.md").read_text()
    assert bracket_flags({"optim.lr": 1.05e-5}, space) == {"optim.lr": "low edge"}
    assert bracket_flags({"optim.lr": math.sqrt(2) * 1e-5}, space) == {}  # the middle, in log space


def test_an_optimizers_studies_stand_in_the_one_space_they_searched():
    studies = [optuna.create_study(study_name=str(k)) for k in range(3)]
    now = {"optim.lr": (1e-3, 1e-1, True)}
    assert searched_space("adamw", studies, now) == now  # none stored: the space of this version
    for study in studies:
        study.set_user_attr("search_space", {"optim.lr": [1e-3, 3e-2, True]})
    assert searched_space("adamw", studies, now) == {"optim.lr": (1e-3, 3e-2, True)}  # finished before a widening
    studies[2].set_user_attr("search_space", {"optim.lr": [1e-3, 1e-1, True]})
    with pytest.raises(InputError, match="the studies of adamw in this storage searched different spaces"):
        searched_space("adamw", studies, now)


def test_a_momentum_at_zero_is_at_its_floor_not_at_an_edge_to_widen():
    space = {"optim.kfac.momentum": (0.0, 0.95, False), "optim.beta2": (0.9, 0.999, False)}
    assert bracket_flags({"optim.kfac.momentum": 0.0, "optim.beta2": 0.9}, space) == {"optim.beta2": "low edge"}
    assert bracket_flags({"optim.kfac.momentum": 0.94}, space) == {"optim.kfac.momentum": "high edge"}
    assert bracket_flags({"optim.kfac.momentum": 0.5}, space) == {}


def worker(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hybrid.cli", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE)


def test_s_studies_of_t_trials_killed_and_rerun_end_with_exactly_s_x_t(tmp_path):
    out = tmp_path / "study"
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    args = ["tune", "--out", str(out), "--optimizers", "adamw,muon", "--studies", "2", "--trials", "2",
            "--seeds", "1", "--select-seeds", "1", "--steps", "20", *sets, "--quiet"]  # fmt: skip
    proc = worker(args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill it in the first trial of the last study
        if len(read_table(out / "trials" / "muon-1" / "0" / "metrics.csv")) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert main(args) == 0
    for name in ("adamw", "adamw-1", "muon", "muon-1"):
        states = [t.state for t in study_trials(out, name)]
        assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 2, (name, states)
        assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert study_trials(out, "muon-1")[0].state == TrialState.FAIL  # the killed trial, run again once


@pytest.mark.parametrize("extra, message", [
    (["--studies", "0"], "--studies must be an integer between 1 and 1000"),
    (["--select-seeds", "0"], "--select-seeds must be an integer between 1 and 1000"),
    (["--sampler", "grid"], "--sampler 'grid' is not a sampler; choose one of: qmc, tpe"),
])  # fmt: skip
def test_bad_protocol_flags_exit_2_with_one_line(tmp_path, capsys, extra, message):
    args = ["tune", "--out", str(tmp_path / "s"), "--optimizers", "adamw", "--quiet", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def run(losses: list[float], seconds_per_step: float = 1.0) -> list[dict]:
    return [{"step": 10 * i, "val_loss": v, "seconds": 10 * i * seconds_per_step} for i, v in enumerate(losses)]


def test_time_to_target_reads_the_seed_mean_curve():
    runs = [run([3.0, 2.0, 1.0, 0.5]), run([3.0, 1.0, 1.0, 0.7])]  # mean: 3.0, 1.5, 1.0, 0.6
    assert mean_final(runs) == pytest.approx(0.6)
    assert time_to_target(runs, 1.5) == (10, 10.0)
    assert time_to_target(runs, 1.2) == (20, 20.0)
    assert time_to_target(runs, mean_final(runs)) == (30, 30.0)  # the reference reaches its own mean at the end
    assert time_to_target(runs, 0.1) is None


def test_the_bootstrap_interval_holds_the_ratio_and_is_exact_without_spread():
    fast = [run([3.0, 1.0, 0.5, 0.4])] * 3  # reaches 0.5 at step 20
    slow = [run([3.0, 2.0, 1.0, 0.5])] * 3  # reaches its own final 0.5 at step 30
    assert bootstrap_ratio(fast, slow, "step", resamples=200) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert bootstrap_ratio(fast, [run([3.0, 2.0, 1.0, 0.5], 2.0)] * 3, "seconds", resamples=50) == \
        (pytest.approx(1 / 3), pytest.approx(1 / 3))  # fmt: skip
    never = [run([3.0, 2.0, 1.5, 1.0])] * 2
    assert bootstrap_ratio(never, slow, "step", resamples=50) == (math.inf, math.inf)
    mixed = [run([3.0, 1.0, 0.5, 0.4]), run([3.0, 2.0, 1.0, 0.6]), run([3.0, 0.9, 0.5, 0.5])]
    low, high = bootstrap_ratio(mixed, slow, "step", resamples=500)
    point = time_to_target(mixed, mean_final(slow))[0] / 30
    assert low <= point <= high


def test_a_rerun_with_another_base_config_is_refused_but_renamed_keys_are_read_back(tmp_path, capsys):
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    args = ["tune", "--out", str(tmp_path), "--optimizers", "adamw", "--trials", "1", "--seeds", "1",
            "--select-seeds", "1", "--steps", "5", *sets, "--quiet"]  # fmt: skip
    assert main(args) == 0
    url = f"sqlite:///{tmp_path / 'study.sqlite3'}"
    study = optuna.load_study(study_name="adamw", storage=url)
    old = study.user_attrs["base"]
    old["train"]["diagnostics_every"] = old["train"].pop("curvature_every")  # as an older release wrote it
    study.set_user_attr("base", old)
    assert main(args) == 0  # the same config under an old key's name: the study continues
    capsys.readouterr()
    assert main([*args, "--set", "optim.lr=0.005"]) == 2
    err = capsys.readouterr().err
    assert "study 'adamw' in this storage was made from another config (optim.lr)" in err and err.count("\n") == 1


def test_keys_search_only_those_and_leave_the_rest_at_the_base_config(tmp_path, capsys):
    base = apply_overrides(Config(), {**TINY, "train.steps": 10, "optim.muon.lr": 0.02})
    (row,) = tune(base, ["muon_qng"], trials=2, seeds=1, out=tmp_path, progress=False,
                  keys=("optim.qng.lr", "optim.qng.damping"), select_seeds=1)  # fmt: skip
    for trial in study_trials(tmp_path, "muon_qng"):
        assert set(trial.params) == {"optim.qng.lr", "optim.qng.damping"}
        saved = load_config(tmp_path / "trials" / "muon_qng" / str(trial.number) / "config.toml")
        assert saved.optim.muon.lr == 0.02 and saved.optim.lr == base.optim.lr  # the linear layers at the base
    assert "| muon_qng | optim.muon.lr |" not in (tmp_path / "best.md").read_text()
    args = ["tune", "--out", str(tmp_path), "--optimizers", "muon_qng", "--trials", "2", "--seeds", "1",
            "--select-seeds", "1", "--steps", "10", *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")],
            "--set", "optim.muon.lr=0.02", "--quiet"]  # fmt: skip
    assert main([*args, "--keys", "optim.qng.lr"]) == 0  # finished: it stands as it was searched
    assert "| muon_qng | optim.qng.damping |" in (tmp_path / "best.md").read_text()
    capsys.readouterr()
    more = [*args[:6], "3", *args[7:]]  # --trials 3: the study would draw again, from another space
    assert more[5:7] == ["--trials", "3"] and main([*more, "--keys", "optim.qng.lr"]) == 2
    assert main([*args, "--keys", "optim.kfac.lr"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "searched another space" in err[0] and "rerun with the same --keys" in err[0]
    assert err[1].startswith("error: --keys optim.kfac.lr: not searched for muon_qng; choose from optim.lr")
