"""Tests for hybrid/tracking.py: what TensorBoard's event reader and MLflow's client read back from a
run folder is metrics.csv, a resumed run continues both runs without repeating a step, and a bad
train.log is refused in one line."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import hybrid.train
from hybrid.cli import main
from hybrid.config import Config, apply_overrides
from hybrid.tables import read_table
from hybrid.tracking import MLFLOW_DB, MLFLOW_RUN_ID
from hybrid.train import resume_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model.n_embd": 16, "model.n_head": 2, "model.n_layer": 1, "model.block_size": 8, "train.batch_size": 4,
        "train.eval_every": 5, "train.eval_batches": 1, "data.corpus_chars": 3000, "train.sample_chars": 0,
        "circuit.n_qubits": 2, "optim.warmup_steps": 2}  # fmt: skip
SETS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
TIMING = ("seconds", "tokens_per_s")  # wall-clock: a step computed again takes another time


def columns(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as ``{column: [(step, value), ...]}``, NaN cells left out (the trackers skip them)."""
    out = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and math.isfinite(value):
                out.setdefault(key, []).append((int(row["step"]), value))
    return out


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_metrics(run: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / MLFLOW_DB}")
    info = client.get_run((run / MLFLOW_RUN_ID).read_text())
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(info.info.run_id, key))
               for key in info.data.metrics}  # fmt: skip
    return info, history


def assert_same(read: dict, csv: dict, rel: float, skip: dict | None = None) -> None:
    assert set(read) == set(csv)
    for key, points in csv.items():
        assert [step for step, _ in read[key]] == [step for step, _ in points], key
        for (step, value), (_, expected) in zip(read[key], points, strict=True):
            if step not in (skip or {}).get(key, ()):
                assert value == pytest.approx(expected, rel=rel, abs=1e-30), (key, step)


def test_tensorboard_and_mlflow_read_back_metrics_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default store would be ./mlruns: it must not appear
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--steps", "60", "--log", "tensorboard,mlflow", *SETS, "--quiet"]) == 0
    csv = columns(read_table(run / "metrics.csv"))
    assert len(csv["val_loss"]) == 13 and "tokens_per_s" in csv and "lr" in csv
    assert_same(tensorboard_scalars(run), csv, rel=1e-6)  # event files store float32
    events = EventAccumulator(str(run))
    events.Reload()
    assert events.PluginTagToContent("hparams")  # the config, once, in this run (no add_hparams subfolder)
    assert [p.name for p in run.iterdir() if p.is_dir()] == []

    info, history = mlflow_metrics(run)
    assert_same(history, csv, rel=1e-7)  # metrics.csv keeps 8 significant digits
    assert info.info.status == "FINISHED" and info.data.params["optim.lr"] == str(Config().optim.lr)
    assert info.data.params["train.steps"] == "60" and info.data.params["model.n_embd"] == "16"
    assert not (tmp_path / "mlruns").exists()


def test_a_resumed_run_continues_both_runs_without_repeating_a_step(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = apply_overrides(Config(), {**TINY, "train.steps": 20, "train.log": "mlflow,tensorboard"})
    save = hybrid.train._save

    def die_at_15(path, step, *args, **kwargs):  # the row of step 15 is logged, its checkpoint never written
        if step == 15:
            raise OSError("disk full")
        save(path, step, *args, **kwargs)

    monkeypatch.setattr(hybrid.train, "_save", die_at_15)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, run, progress=False)
    info, history = mlflow_metrics(run)
    assert info.info.status == "FAILED" and info.data.tags["stopped_by"] == "disk full"  # closed on the error
    assert [step for step, _ in history["val_loss"]] == [0, 5, 10, 15]

    monkeypatch.setattr(hybrid.train, "_save", save)
    train(resume_config(run), run, resume=True, progress=False)  # from the checkpoint of step 10
    rows = read_table(run / "metrics.csv")
    assert [row["step"] for row in rows] == [0, 5, 10, 15, 20]
    csv = columns(rows)
    assert_same(tensorboard_scalars(run), csv, rel=1e-6)  # step 15 once: the resumed session's
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # one file per session, one run

    again, history = mlflow_metrics(run)
    assert again.info.run_id == info.info.run_id and again.info.status == "FINISHED"
    # step 15 once: the first session's row, whose losses the resumed run computed again
    assert_same(history, csv, rel=1e-7, skip={key: (15,) for key in TIMING})
    assert len(info.data.params) == len(again.data.params)


@pytest.mark.parametrize("command", [["train", "--out", "{out}"], ["tune", "--out", "{out}", "--trials", "1"],
                                     ["sweep", "--out", "{out}", "--steps", "5"]])  # fmt: skip
def test_an_unknown_sink_is_refused_in_one_line(tmp_path, capsys, command):
    args = [part.format(out=tmp_path / "out") for part in command]
    assert main([*args, "--log", "tensorboard,wandb", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: train.log: unknown sink 'wandb'; choose from csv, tensorboard, mlflow "
                   "(comma-separated, csv is always on)\n")  # fmt: skip
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_the_refusal_does_not_import_the_trackers():
    code = ("import sys; from hybrid.cli import main; rc = main(['train', '--log', 'wandb']); "
            "print(rc, 'mlflow' in sys.modules, 'hybrid.tracking' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
