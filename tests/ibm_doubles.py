"""Test doubles for the IBM path: an exact estimator and a stand-in for QiskitRuntimeService.

No test builds ``QiskitRuntimeService``: it goes to the network even with a CRN. The stand-in
has the three methods ``IBMService`` uses (``backend``, ``job``, ``jobs``) and string statuses,
as the real service has; its backends are fake devices, so jobs run in local testing mode.
"""

from __future__ import annotations

from qiskit.primitives import StatevectorEstimator

import hybrid.ibm.runtime

TINY = {
    "model.block_size": 2, "train.batch_size": 2, "circuit.n_qubits": 2, "model.n_embd": 16,
    "model.n_head": 2, "model.n_layer": 1, "data.corpus_chars": 5_000,
    "optim.name": "hybrid",  # QNG's metric rides in the jobs (the default optimizer, muon, has none)
}  # fmt: skip
# 4 circuit inputs per batch, 256 shots; flags given after these win
TINY_FLAGS = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")] + ["--shots", "256"]


def exact_estimator(monkeypatch) -> list:
    """Make every job run on qiskit's exact ``StatevectorEstimator``; returns the list of
    submitted PUB lists."""
    sent = []

    def submit(mode, pubs, options, tag, seed, runtime, local):
        sent.append(pubs)
        return StatevectorEstimator().run(pubs)

    monkeypatch.setattr(hybrid.ibm.runtime, "submit", submit)
    return sent


class StubJob:
    """A job as the real service returns it: string status, ``result(timeout=...)``."""

    def __init__(self, job_id, result=None, status="DONE", tags=()):
        self._id, self._result, self._status, self.tags = job_id, result, status, list(tags)

    def job_id(self):
        return self._id

    def status(self):
        return self._status

    def result(self, timeout=None):
        from qiskit_ibm_runtime.exceptions import RuntimeJobFailureError, RuntimeJobTimeoutError

        if self._status in ("ERROR", "CANCELLED"):
            raise RuntimeJobFailureError(f"Unable to retrieve job result. Job was {self._status.lower()}.")
        if self._status != "DONE":
            raise RuntimeJobTimeoutError(f"timed out after {timeout}")
        return self._result

    def cancel(self):
        self._status = "CANCELLED"


class StubService:
    """``backend(name)`` gives a fake device; ``job``/``jobs`` look up ``self.stored``."""

    def __init__(self, device_factory):
        self.device_factory = device_factory
        self.stored: dict[str, StubJob] = {}

    def backend(self, name):
        return self.device_factory()

    def job(self, job_id):
        if job_id not in self.stored:
            from qiskit_ibm_runtime.exceptions import RuntimeJobNotFound

            raise RuntimeJobNotFound(f"job {job_id} not found")
        return self.stored[job_id]

    def jobs(self, job_tags=None, limit=10):
        return [j for j in self.stored.values() if set(job_tags or []) <= set(j.tags)][:limit]
