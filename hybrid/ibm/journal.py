"""The job journal: an SQLite file in the run folder that knows every job a run has sent.

    journal = Journal(run / "jobs.sqlite")
    row = journal.find(key)                      # the job this computation already has, if any
    journal.begin(key, ...)                      # committed before the job is submitted
    journal.submitted(key, job_id)               # committed before the process waits on it
    journal.finished(key, result_bytes)          # the result, kept for replay and `hybrid jobs`

A key names one computation: ``"<purpose>/<step>/<fingerprint>"``, where the fingerprint
hashes the backend, the circuits, every parameter value and the options. A resumed run
replays its steps from the last checkpoint, builds the same PUBs, finds their keys here and
takes the recorded result or retrieves the recorded job by id: nothing submitted is
submitted again. The journal holds no credentials, only what the jobs compute.

Each write is its own transaction with ``synchronous=FULL`` (durable when ``commit``
returns); WAL mode lets ``hybrid jobs`` read while a run writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from hybrid.errors import InputError

JOURNAL = "jobs.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,        -- purpose/step/fingerprint: what the job computes
    purpose TEXT NOT NULL,       -- train (forward + parameter shifts), eval, metric
    step INTEGER,                -- optimizer steps completed when the job was built
    backend TEXT NOT NULL,
    job_id TEXT,                 -- NULL while submitting: the service has not answered yet
    tag TEXT NOT NULL,           -- job tag sent with the job, to find it if the id was lost
    state TEXT NOT NULL,         -- SUBMITTING, then the service's: QUEUED, RUNNING, DONE, ERROR, CANCELLED
    pubs TEXT NOT NULL,          -- JSON list of {name, shape, observables, circuits}
    circuits INTEGER NOT NULL,   -- circuit executions in the job (parameter sets x measurement settings)
    shots INTEGER NOT NULL,
    qpu_seconds REAL,            -- estimated before submission
    created REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT,
    result BLOB                  -- npz of each PUB's evs and stds, once fetched
);
CREATE TABLE IF NOT EXISTS events (
    at REAL NOT NULL,
    key TEXT NOT NULL,
    event TEXT NOT NULL,         -- begin, submitted, status, finished, reused, retrieved, adopted, failed
    detail TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class JobRow:
    key: str
    purpose: str
    step: int | None
    backend: str
    job_id: str | None
    tag: str
    state: str
    pubs: list
    circuits: int
    shots: int
    qpu_seconds: float | None
    created: float
    updated: float
    error: str | None
    result: bytes | None


class Journal:
    """One run's job journal (see the module docstring). ``path`` is created if missing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise InputError(
                f"{self.path} is not a job journal ({error}); point at a run folder of hybrid submit"
            ) from None

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, args: tuple, key: str, event: str, detail: str | None = None) -> None:
        now = time.time()
        with self.db:  # one transaction: the row and its event land together or not at all
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(sql, args)
            self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (now, key, event, detail))

    def begin(self, key: str, purpose: str, step: int | None, backend: str, tag: str, pubs: list,
              circuits: int, shots: int, qpu_seconds: float | None) -> None:  # fmt: skip
        """Record that ``key`` is about to be submitted (state SUBMITTING, no job id yet)."""
        now = time.time()
        self._write(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, NULL, ?, 'SUBMITTING', ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (key, purpose, step, backend, tag, json.dumps(pubs), circuits, shots, qpu_seconds, now, now),
            key, "begin",
        )  # fmt: skip

    def submitted(self, key: str, job_id: str, event: str = "submitted") -> None:
        """Record the service's job id for ``key`` (``event`` "adopted" when found by tag)."""
        self._write("UPDATE jobs SET job_id = ?, state = 'QUEUED', updated = ? WHERE key = ?",
                    (job_id, time.time(), key), key, event, job_id)  # fmt: skip

    def status(self, key: str, state: str) -> None:
        """Record a state the service reported (QUEUED, RUNNING, ...)."""
        self._write("UPDATE jobs SET state = ?, updated = ? WHERE key = ?", (state, time.time(), key),
                    key, "status", state)  # fmt: skip

    def finished(self, key: str, result: bytes) -> None:
        """Store the fetched result of ``key``; its state becomes DONE."""
        self._write("UPDATE jobs SET state = 'DONE', result = ?, updated = ? WHERE key = ?",
                    (result, time.time(), key), key, "finished")  # fmt: skip

    def failed(self, key: str, state: str, error: str) -> None:
        """Record that ``key``'s job ended in ERROR or CANCELLED with message ``error``."""
        self._write("UPDATE jobs SET state = ?, error = ?, updated = ? WHERE key = ?",
                    (state, error, time.time(), key), key, "failed", error)  # fmt: skip

    def retire(self, key: str) -> None:
        """Rename a failed job's row to ``key#<job id>`` so that ``key`` can be sent again."""
        self._write("UPDATE jobs SET key = key || '#' || COALESCE(job_id, 'unsent') WHERE key = ?", (key,),
                    key, "retired")  # fmt: skip

    def forget(self, key: str, reason: str) -> None:
        """Drop a SUBMITTING row whose job never reached the service, so it can be sent again."""
        self._write("DELETE FROM jobs WHERE key = ? AND job_id IS NULL", (key,), key, "forgotten", reason)

    def note(self, key: str, event: str, detail: str | None = None) -> None:
        """Append an event without changing the row (``reused``, ``retrieved``)."""
        with self.db:
            self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (time.time(), key, event, detail))

    def find(self, key: str) -> JobRow | None:
        row = self.db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _row(row) if row else None

    def by_job_id(self, job_id: str) -> JobRow | None:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def rows(self) -> list[JobRow]:
        """Every job, oldest first."""
        return [_row(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY created, rowid")]

    def events(self, key: str | None = None) -> list[tuple[float, str, str, str | None]]:
        """``(time, key, event, detail)`` rows, oldest first, for ``key`` or all."""
        if key is None:
            return list(self.db.execute("SELECT * FROM events ORDER BY rowid"))
        return list(self.db.execute("SELECT * FROM events WHERE key = ? ORDER BY rowid", (key,)))

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _row(values: tuple) -> JobRow:
    fields = list(values)
    fields[7] = json.loads(fields[7])  # pubs
    return JobRow(*fields)
