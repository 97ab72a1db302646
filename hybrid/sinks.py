"""Where a training run's metrics rows go: the loop's one logging seam.

Each evaluation makes one row, a dict of ``step`` (int) and numbers (losses in nats per token,
``lr``, ``tokens_per_s``, ``seconds`` of wall-clock, what the preconditioners report), and
``MetricsLog.write(row)`` hands it to every sink in order. A sink has two methods:

    write(row: dict) -> None     one evaluation's row
    close() -> None              at the end of the run (also when it stops on an error)

The CSV sink is the run folder's ``metrics.csv`` and is always on; the progress bar shows the
last row's losses. A new sink is a class with these two methods that ``hybrid.train`` adds to
the run's ``MetricsLog``.
"""

from __future__ import annotations

from pathlib import Path

from hybrid.tables import append_row


class CsvSink:
    """``metrics.csv``: one line per row, rewritten atomically (new columns get a header)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, row: dict) -> None:
        append_row(self.path, row)

    def close(self) -> None:
        pass


class ProgressSink:
    """The tqdm bar's postfix: the last evaluation's train and validation losses."""

    def __init__(self, bar):
        self.bar = bar

    def write(self, row: dict) -> None:
        self.bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", refresh=False)

    def close(self) -> None:
        pass


class MetricsLog:
    """The sinks of one run; ``write`` gives each the same row, ``close`` closes them all."""

    def __init__(self, sinks: list):
        self.sinks = list(sinks)

    def write(self, row: dict) -> None:
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
