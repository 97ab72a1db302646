"""Experiment trackers as metrics sinks: TensorBoard event files and an MLflow run, in the run folder.

    run folder/
      events.out.tfevents.*   TensorBoard: one scalar per metrics column, tagged by its name; the
                              config's keys as hyperparameters (the HParams tab), written once
      mlflow.db               MLflow's SQLite store (``mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db``)
      mlflow_run_id           the MLflow run this folder logs to; a resumed run continues it

Both get the rows of ``hybrid.sinks.MetricsLog`` (``write(row)``, ``close(error)``); a value that
is NaN in ``metrics.csv`` (no batch loss before the first step, no floor on other data) is not
logged. A resumed run continues the same TensorBoard run and the same MLflow run: TensorBoard
drops the events after the checkpoint's step (``purge_step``), and a row at a step MLflow
already holds (logged after the last checkpoint, before the process died) is not logged again,
since MLflow cannot delete a metric; its losses are those the resumed run computes again.

Needs the optional extra ``track`` (tensorboard, mlflow); ``hybrid.train`` imports this module
only when ``train.log`` names one of them, so ``hybrid --help`` does not pay for it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from hybrid.checkpoint import atomic_write

MLFLOW_DB, MLFLOW_RUN_ID, MLFLOW_ARTIFACTS, EXPERIMENT = "mlflow.db", "mlflow_run_id", "mlartifacts", "hybrid"
EVENTS = "events.out.tfevents.*"
BATCH = 100  # MLflow's limit on params per log_batch call


def tracking_sinks(names: list[str], out: Path, params: dict, resume_step: int | None) -> list:
    """The sinks of ``names`` (``tensorboard``, ``mlflow``; others are not this module's) for run folder ``out``.

    Args:
        params: the flat config, ``{"optim.lr": 0.003, ...}``: hyperparameters of a new run.
        resume_step: the checkpoint's step when the run continues; None for a new run, which
            removes the event files and MLflow store a run killed before its first checkpoint left.
    """
    sinks = []
    if "tensorboard" in names:
        sinks.append(TensorBoardSink(out, params, resume_step))
    if "mlflow" in names:
        sinks.append(MlflowSink(out, params, resume_step))
    return sinks


def _metrics(row: dict) -> dict[str, float]:
    """The row's finite numbers, without ``step``."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, int | float) and math.isfinite(value)}  # fmt: skip


class TensorBoardSink:
    """Event files in the run folder: a scalar per column at the row's step, hyperparameters once."""

    def __init__(self, out: Path, params: dict, resume_step: int | None):
        if resume_step is None:
            for old in out.glob(EVENTS):
                old.unlink()
        # purge_step: the reader drops the events at and after it that an earlier session wrote
        self.writer = SummaryWriter(log_dir=str(out), purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            values = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in params.items()}
            for summary in hparams(values, {"val_loss": math.nan, "train_loss": math.nan}):
                self.writer.file_writer.add_summary(summary)  # into this run, not the subfolder add_hparams makes

    def write(self, row: dict) -> None:
        for key, value in _metrics(row).items():
            self.writer.add_scalar(key, value, global_step=int(row["step"]))
        self.writer.flush()  # a killed run keeps what it logged

    def close(self, error: BaseException | None = None) -> None:
        self.writer.close()


class MlflowSink:
    """An MLflow run in the run folder's SQLite store: params once, a metric per column per row."""

    def __init__(self, out: Path, params: dict, resume_step: int | None):
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow tables"
        id_file = out / MLFLOW_RUN_ID
        if resume_step is None:
            (out / MLFLOW_DB).unlink(missing_ok=True)
            id_file.unlink(missing_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{(out / MLFLOW_DB).resolve()}")
        self.logged_through = -1  # the last step this run holds
        if id_file.is_file():
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            for key in self.client.get_run(self.run_id).data.metrics:
                steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
                self.logged_through = max([self.logged_through, *steps])
            return
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            EXPERIMENT, artifact_location=(out / MLFLOW_ARTIFACTS).resolve().as_uri())  # fmt: skip
        run = self.client.create_run(experiment_id, run_name=out.resolve().name,
                                     tags={"run_folder": str(out.resolve())})  # fmt: skip
        self.run_id = run.info.run_id
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH])
        atomic_write(id_file, lambda file: file.write(self.run_id.encode()))

    def write(self, row: dict) -> None:
        step = int(row["step"])
        if step <= self.logged_through:
            return  # logged before the last checkpoint's session died; MLflow cannot replace it
        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in _metrics(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged_through = step

    def close(self, error: BaseException | None = None) -> None:
        """FINISHED; KILLED for Ctrl-C or a pruned tuning trial (stopped on purpose); FAILED otherwise,
        with the error's first line in the tag ``stopped_by``."""
        if error is None:
            status = RunStatus.FINISHED
        elif not isinstance(error, Exception) or type(error).__name__ == "TrialPruned":  # optuna.TrialPruned
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        if error is not None:
            self.client.set_tag(self.run_id, "stopped_by", (str(error).splitlines() or [type(error).__name__])[0][:500])
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(status))
