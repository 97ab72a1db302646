"""Tests for hybrid/ibm/journal.py: what is committed is durable and visible to readers."""

import sqlite3

import pytest

from hybrid import InputError
from hybrid.ibm import Journal


def begin(journal, key="train/0/abc"):
    journal.begin(key, "train", 0, "fake_manila", "hybrid-abc", [{"name": "forward", "shape": [4]}], 4, 256, 1.5)


def test_each_state_is_committed_and_seen_by_another_connection(tmp_path):
    writer = Journal(tmp_path / "jobs.sqlite")
    reader = Journal(tmp_path / "jobs.sqlite")  # e.g. `hybrid jobs list` while a run goes on
    begin(writer)
    assert reader.find("train/0/abc").state == "SUBMITTING" and reader.find("train/0/abc").job_id is None
    writer.submitted("train/0/abc", "job-1")
    assert reader.by_job_id("job-1").state == "QUEUED"
    writer.status("train/0/abc", "RUNNING")
    writer.finished("train/0/abc", b"npz bytes")
    row = reader.find("train/0/abc")
    assert (row.state, row.result, row.pubs, row.step) == ("DONE", b"npz bytes", [{"name": "forward", "shape": [4]}], 0)
    assert [e[2] for e in reader.events()] == ["begin", "submitted", "status", "finished"]
    writer.close()
    assert Journal(tmp_path / "jobs.sqlite").find("train/0/abc").state == "DONE"  # reopened


def test_a_key_is_begun_once(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    begin(journal)
    with pytest.raises(sqlite3.IntegrityError):
        begin(journal)
    assert len(journal.rows()) == 1 and len(journal.events()) == 1  # the failed write left nothing


def test_failed_jobs_retire_and_unsent_ones_are_forgotten(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    begin(journal)
    journal.submitted("train/0/abc", "job-1")
    journal.failed("train/0/abc", "ERROR", "calibration in progress")
    journal.retire("train/0/abc")
    assert journal.find("train/0/abc") is None and journal.find("train/0/abc#job-1").error == "calibration in progress"
    begin(journal)  # the key can be sent again
    journal.forget("train/0/abc", "never reached the service")
    assert [r.key for r in journal.rows()] == ["train/0/abc#job-1"]
    journal.submitted("train/0/abc#job-1", "job-1")  # forget never drops a row with a job id
    journal.forget("train/0/abc#job-1", "x")
    assert len(journal.rows()) == 1


def test_meta_and_a_file_that_is_not_a_journal(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    journal.set_meta("layout/fake_manila//abc", "[1, 2]")
    assert journal.get_meta("layout/fake_manila//abc") == "[1, 2]" and journal.get_meta("nothing") is None
    (tmp_path / "bad.sqlite").write_bytes(b"this is no database" * 100)
    with pytest.raises(InputError, match="is not a job journal"):
        Journal(tmp_path / "bad.sqlite")
