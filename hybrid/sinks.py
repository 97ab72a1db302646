"""Where a training run's metrics rows go: the loop's one logging seam.

Each evaluation makes one row, a dict of ``step`` (int) and numbers (losses in nats per token,
``lr``, ``tokens_per_s``, ``seconds`` of wall-clock, what the preconditioners report), and
``MetricsLog.write(row)`` hands it to every sink in order. A sink has two methods:

    write(row: dict) -> None                      one evaluation's row
    close(error: BaseException | None) -> None    at the end of the run; ``error`` is what stopped it

The CSV sink is the run folder's ``metrics.csv`` and is always on; the progress bar shows the
last row's losses. ``train.log`` names the others (``SINKS``): TensorBoard event files and an
MLflow run in the run folder, both in ``hybrid.tracking`` (the optional extra ``track``). A new
sink is a class with these two methods that ``hybrid.train`` adds to the run's ``MetricsLog``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hybrid.errors import InputError
from hybrid.tables import append_row

# train.log's names -> the module a sink needs (None: always there)
SINKS = {"csv": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}


def sink_names(log: str, key: str = "train.log") -> list[str]:
    """The sinks of a comma-separated ``log``, ``csv`` first and always on.

    Raises:
        InputError: an unknown name, or a sink whose package (the extra ``track``) is missing.
    """
    names = [name.strip().lower() for name in log.split(",") if name.strip()]
    unknown = [name for name in names if name not in SINKS]
    if unknown:
        raise InputError(f"{key}: unknown sink {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(SINKS)} (comma-separated, csv is always on)")  # fmt: skip
    for name in names:
        if SINKS[name] and importlib.util.find_spec(SINKS[name]) is None:
            raise InputError(f"{key}: {name} needs the {SINKS[name]} package; pip install 'hybrid-qlm[track]'")
    return list(dict.fromkeys(["csv", *names]))


class CsvSink:
    """``metrics.csv``: one line per row, rewritten atomically (new columns get a header)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, row: dict) -> None:
        append_row(self.path, row)

    def close(self, error: BaseException | None = None) -> None:
        pass


class ProgressSink:
    """The tqdm bar's postfix: the last evaluation's train and validation losses."""

    def __init__(self, bar):
        self.bar = bar

    def write(self, row: dict) -> None:
        self.bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", refresh=False)

    def close(self, error: BaseException | None = None) -> None:
        pass


class MetricsLog:
    """The sinks of one run; ``write`` gives each the same row, ``close`` closes them all."""

    def __init__(self, sinks: list):
        self.sinks = list(sinks)

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)

    def close(self, error: BaseException | None = None) -> None:
        for sink in self.sinks:
            sink.close(error)

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(error)
