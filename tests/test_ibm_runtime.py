"""Tests for hybrid/ibm/runtime.py and jobs.py: the journal decides what is sent, IBM's service
and local testing mode behave alike behind IBMService/LocalService, limits are checked before
submission, execution modes and expired sessions."""

import numpy as np
import pytest
import torch
from qiskit_ibm_runtime.fake_provider import FakeManilaV2

import circuits
from hybrid import InputError, QuantumLayer
from hybrid.backends import get_backend
from hybrid.ibm import IBMService, JobFailed, Journal, LocalService, Runtime
from hybrid.ibm.jobs import ExecutionOptions, JobResult, normalize_status
from hybrid.ibm.runtime import Cost
from tests.ibm_doubles import StubJob, StubService

CIRCUIT = circuits.HardwareEfficient(2, 1, measure="Z")


def forward(layer, x):
    """One recorded forward pass: one job (forward and parameter shifts)."""
    out = layer(x)
    out.sum().backward()
    return out.detach()


def ibm_layer():
    return QuantumLayer(CIRCUIT, "ibm_test", shots=64).double()


def test_ibm_path_runs_on_an_injected_service_and_normalizes_status(tmp_path):
    stub = StubService(FakeManilaV2)
    runtime = Runtime(ExecutionOptions(shots=64), Journal(tmp_path / "jobs.sqlite"), ibm=IBMService(stub))
    with runtime.active():
        out = forward(ibm_layer(), torch.rand(2, 2, dtype=torch.float64, requires_grad=True))
    [row] = runtime.journal.rows()
    assert row.backend == "ibm_test" and row.state == "DONE" and out.shape == (2, 2)
    live = runtime.ibm.live[row.job_id]
    assert type(live.status()).__name__ == "JobStatus" and runtime.ibm.status(row.job_id) == "DONE"
    assert normalize_status("RUNNING") == "RUNNING" and StubJob("j").status() == "DONE"


def crashed_run(tmp_path, monkeypatch):
    """A run whose process died right after journaling the job id; returns its journal, job
    id, the primitive result the service kept, and the input."""
    stub = StubService(FakeManilaV2)
    journal = Journal(tmp_path / "jobs.sqlite")
    runtime = Runtime(ExecutionOptions(shots=64), journal, ibm=IBMService(stub))

    def die(self, service, key, job_id):
        raise SystemExit("killed")

    monkeypatch.setattr(Runtime, "_wait", die)
    layer, x = ibm_layer(), torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    with runtime.active(), pytest.raises(SystemExit):
        forward(layer, x)
    monkeypatch.undo()
    [row] = journal.rows()
    return journal, row, runtime.ibm.live[row.job_id].result(), layer, x


def test_a_journaled_job_is_retrieved_by_id_not_sent_again(tmp_path, monkeypatch):
    journal, row, kept, layer, x = crashed_run(tmp_path, monkeypatch)
    assert row.state == "QUEUED" and row.result is None
    stub = StubService(FakeManilaV2)
    stub.stored[row.job_id] = StubJob(row.job_id, kept)
    runtime = Runtime(ExecutionOptions(shots=64), journal, ibm=IBMService(stub))  # a new process
    with runtime.active():
        out = forward(layer, x)
    assert runtime.submitted == 0
    assert [e[2] for e in journal.events(row.key)] == ["begin", "submitted", "retrieved", "finished"]  # no 2nd send
    np.testing.assert_array_equal(out.numpy(), kept[0].data.evs)
    with runtime.active():  # and now the result comes from the journal itself
        forward(layer, x)
    assert journal.events(row.key)[-1][2] == "reused" and runtime.submitted == 0


def test_a_job_sent_before_its_id_was_journaled_is_found_by_tag(tmp_path, monkeypatch):
    journal, row, kept, layer, x = crashed_run(tmp_path, monkeypatch)
    journal.db.execute("UPDATE jobs SET job_id = NULL, state = 'SUBMITTING'")  # died inside submit
    stub = StubService(FakeManilaV2)
    stub.stored[row.job_id] = StubJob(row.job_id, kept, tags=[row.tag])
    runtime = Runtime(ExecutionOptions(shots=64), journal, ibm=IBMService(stub))
    with runtime.active():
        forward(layer, x)
    assert runtime.submitted == 0 and "adopted" in [e[2] for e in journal.events(row.key)]
    assert journal.find(row.key).job_id == row.job_id


def test_an_unsent_job_is_sent_and_a_failed_one_is_sent_anew(tmp_path, monkeypatch):
    journal, row, kept, layer, x = crashed_run(tmp_path, monkeypatch)
    stub = StubService(FakeManilaV2)
    stub.stored[row.job_id] = StubJob(row.job_id, status="ERROR")
    runtime = Runtime(ExecutionOptions(shots=64), journal, ibm=IBMService(stub))
    with runtime.active(), pytest.raises(JobFailed, match="failed .*Job was error.* --resume DIR sends it again"):
        forward(layer, x)
    assert journal.find(row.key).state == "ERROR"
    with runtime.active():
        forward(layer, x)  # the failed job computed nothing: sent anew
    assert runtime.submitted == 1
    events = [e[2] for e in journal.events(row.key)]
    assert events[events.index("retired") :][:3] == ["retired", "begin", "submitted"] and events[-1] == "finished"
    assert {r.state for r in journal.rows()} == {"ERROR", "DONE"}
    journal.db.execute("UPDATE jobs SET job_id = NULL, state = 'SUBMITTING' WHERE state = 'DONE'")
    with runtime.active():  # begun but never sent (no job carries its tag): forgotten, then sent
        forward(layer, x)
    assert runtime.submitted == 2 and "forgotten" in [e[2] for e in journal.events(row.key)]


def test_a_slow_job_times_out_and_stays_journaled(tmp_path, monkeypatch):
    journal, row, kept, layer, x = crashed_run(tmp_path, monkeypatch)
    stub = StubService(FakeManilaV2)
    stub.stored[row.job_id] = StubJob(row.job_id, kept, status="QUEUED")
    runtime = Runtime(ExecutionOptions(shots=64, timeout=0.05), journal, ibm=IBMService(stub))
    with (
        runtime.active(),
        pytest.raises(JobFailed, match="did not finish within 1 s; it stays in the journal .* waits for it again"),
    ):
        forward(layer, x)
    assert journal.find(row.key).job_id == row.job_id and runtime.submitted == 0


@pytest.mark.parametrize("mode", ["batch", "session"])
def test_execution_modes_give_the_job_mode_results(mode):
    x = torch.rand(2, 2, dtype=torch.float64)
    results = []
    for m in ("job", mode):
        layer = QuantumLayer(CIRCUIT, "fake_manila", shots=64).double()
        layer.weights.data.fill_(0.3)
        runtime = Runtime(ExecutionOptions(shots=64, mode=m))
        with runtime.active(), torch.no_grad():
            results.append(layer(x))
            first = runtime._modes[("fake_manila", "")]
            assert type(first).__name__ == {"job": "FakeManilaV2", "batch": "Batch", "session": "Session"}[m]
            if m == "session":  # a session that expired mid-run is replaced, once
                first.close()
                layer(x + 1)
                assert runtime._modes[("fake_manila", "")] is not first
        assert runtime._modes == {}  # closed with the block
    torch.testing.assert_close(results[0], results[1])  # local jobs are seeded by their content


def test_limits_are_checked_before_anything_is_sent():
    runtime = Runtime(ExecutionOptions(shots=1000, max_execution_time=60))
    fake, aer = get_backend("fake_manila"), get_backend("qiskit.aer")
    runtime.check_limits(fake, Cost(5000, 1000, 59.0))
    with pytest.raises(InputError, match="5,001,000 circuit-shots, over IBM's 5,000,000 per job"):
        runtime.check_limits(fake, Cost(5001, 1000, 1.0))
    with pytest.raises(InputError, match="about 61 QPU seconds, over the 60 s"):
        runtime.check_limits(fake, Cost(10, 1000, 61.0))
    runtime.check_limits(aer, Cost(10**6, 1000, 0.0))  # simulators have no such limits
    with pytest.raises(InputError, match="execution.max_execution_time must lie in"):
        ExecutionOptions(max_execution_time=20_000).validate()


def test_fingerprint_ignores_mode_and_timeout_but_not_shots():
    layer = QuantumLayer(CIRCUIT, "qiskit.aer").double()
    runtime = Runtime(ExecutionOptions())
    isa = layer.executor.isa(runtime)
    from hybrid.ibm.runtime import Pub

    pubs = [Pub("forward", isa, isa.observables(layer.executor.observables), np.zeros((3, 1, 6)))]
    backend = get_backend("qiskit.aer")
    prints = {Runtime(o).fingerprint(backend, pubs) for o in
              (ExecutionOptions(), ExecutionOptions(mode="session"), ExecutionOptions(timeout=5.0))}  # fmt: skip
    assert len(prints) == 1 and Runtime(ExecutionOptions(shots=2048)).fingerprint(backend, pubs) not in prints


def test_the_layout_is_chosen_once_and_kept(tmp_path):
    journal = Journal(tmp_path / "jobs.sqlite")
    layer = QuantumLayer(CIRCUIT, "fake_manila").double()
    first = layer.executor.isa(Runtime(ExecutionOptions(), journal))
    key = next(k for (k,) in journal.db.execute("SELECT key FROM meta") if k.startswith("layout/fake_manila/"))
    assert journal.get_meta(key) == str(list(first.layout))
    journal.set_meta(key, "[4, 3]")  # e.g. chosen on yesterday's calibration
    again = layer.executor.isa(Runtime(ExecutionOptions(), journal), gates=[0, 1], name="prefix")
    assert again.layout == (4, 3)


def test_results_round_trip_and_local_jobs_survive_the_process(tmp_path):
    result = JobResult((np.arange(6.0).reshape(2, 3),), (np.full((2, 3), 0.1),))
    back = JobResult.from_bytes(result.to_bytes())
    np.testing.assert_array_equal(back.evs[0], result.evs[0])
    layer = QuantumLayer(CIRCUIT, "fake_manila", shots=64).double()
    runtime = Runtime(ExecutionOptions(shots=64), local=LocalService(tmp_path / "local"))
    with runtime.active(), torch.no_grad():
        layer(torch.rand(2, 2, dtype=torch.float64))
    [(tag, job_id)] = runtime.local.tags.items()
    later = LocalService(tmp_path / "local")  # another process
    assert later.find(tag) == job_id and later.status(job_id) == "DONE"
    assert later.result(job_id, 1.0).evs[0].shape == (2, 2)
    assert LocalService().status(job_id) == "UNKNOWN"


def test_execution_options_are_valid_estimator_options():
    from qiskit_ibm_runtime.options import EstimatorOptions

    options = ExecutionOptions(shots=4000, resilience_level=2, twirling=True, dd="XY4", max_execution_time=600)
    built = EstimatorOptions(**options.runtime_options("hybrid-abc", seed=None))  # validates names and values
    assert (built.default_shots, built.resilience_level, built.max_execution_time) == (4000, 2, 600)
    assert built.twirling.enable_gates and built.dynamical_decoupling.sequence_type == "XY4"
    assert built.environment.job_tags == ["hybrid-abc"]
    plain = ExecutionOptions().runtime_options("t", seed=7)
    assert "twirling" not in plain and "dynamical_decoupling" not in plain  # the service's defaults
    assert EstimatorOptions(**plain).simulator.seed_simulator == 7
