"""Tests for hybrid/ibm/credentials.py: the token is found where qiskit-ibm-runtime looks and
appears nowhere; every failure is one line that says how to fix it. No test here builds
QiskitRuntimeService in-process; the command-line test does, in its own process, offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from qiskit_ibm_runtime.accounts import management
from qiskit_ibm_runtime.exceptions import IBMNotAuthorizedError

from hybrid.cli import main
from hybrid.ibm import credentials
from hybrid.ibm.credentials import ServiceError, connect, describe, scrub

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "planted-token-0123456789abcdef"


def test_planted_token_never_appears_when_ibm_is_unreachable(tmp_path):
    out = tmp_path / "run"
    env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "QISKIT_IBM_TOKEN": PLANTED,
        "QISKIT_IBM_RUNTIME_LOG_LEVEL": "DEBUG",  # the library's own logging, as loud as it gets
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }  # nothing listens: unreachable
    result = subprocess.run(
        [sys.executable, "-m", "hybrid.cli", "submit", "--backend", "ibm_brisbane", "--steps", "2", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    ours = [line for line in result.stderr.splitlines() if not re.match(r"[\w.]+:(DEBUG|INFO|WARNING):", line)]
    assert len(ours) == 1 and ours[0].startswith("error: cannot reach IBM Quantum to connect"), result.stderr
    assert PLANTED not in result.stdout + result.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert [p.name for p in files] == ["submit.log"]  # no journal, config or checkpoint before a connection
    assert "cannot reach IBM Quantum" in (out / "submit.log").read_text()
    assert all(PLANTED.encode() not in p.read_bytes() for p in files)


@pytest.fixture
def no_account(tmp_path, monkeypatch):
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    monkeypatch.setattr(management, "_DEFAULT_ACCOUNT_CONFIG_JSON_FILE", str(tmp_path / "qiskit-ibm.json"))
    monkeypatch.setattr(credentials, "ACCOUNT_FILE", tmp_path / "qiskit-ibm.json")
    return tmp_path / "qiskit-ibm.json"


def test_missing_account_is_one_line_with_the_fix(no_account, tmp_path, capsys):
    assert main(["submit", "--backend", "ibm_brisbane", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no IBM Quantum account found; save one with")
    assert "QISKIT_IBM_TOKEN" in err


def raiser(error):
    def factory():
        raise error

    return factory


def test_rejected_and_unreachable_are_told_apart_and_scrubbed(no_account, monkeypatch):
    monkeypatch.setenv("QISKIT_IBM_TOKEN", PLANTED)
    with pytest.raises(ServiceError, match="rejected the credentials") as rejected:
        connect(raiser(IBMNotAuthorizedError(f"token {PLANTED} is not valid")))
    assert PLANTED not in str(rejected.value) and "***" in str(rejected.value)

    class Http401(Exception):
        status_code = 401

    assert "rejected the credentials" in describe(Http401("Provided API key could not be found"), "connect")
    try:
        try:
            raise requests.ConnectionError("Failed to resolve 'iam.cloud.ibm.com'")
        except requests.ConnectionError as cause:
            raise RuntimeError("Unable to retrieve instances") from cause
    except RuntimeError as error:
        assert describe(error, "connect").startswith("cannot reach IBM Quantum to connect (ConnectionError")


def test_scrub_knows_the_saved_accounts_too(no_account, monkeypatch):
    no_account.write_text(json.dumps({"default-ibm-quantum-platform": {"token": "saved-secret-42", "channel": "x"}}))
    monkeypatch.setenv("QISKIT_IBM_TOKEN", PLANTED)
    assert scrub(f"a {PLANTED} b saved-secret-42 c") == "a *** b *** c"


def test_backend_lookup_failures_are_one_line(monkeypatch):
    from qiskit.providers.exceptions import QiskitBackendNotFoundError

    from hybrid.ibm import IBMService

    class NoBackends:
        def backend(self, name):
            raise QiskitBackendNotFoundError("No backend matches the criteria.")

    with pytest.raises(ServiceError, match="has no such backend for this account"):
        IBMService(NoBackends()).backend("ibm_nowhere")


def test_a_malformed_instance_is_one_line_about_the_crn():
    def bad_instance():
        import re

        return re.match(r"crn:v1:(?P<x>\w+)", "not-a-crn").group("x")  # what the runtime's parser hits

    with pytest.raises(ServiceError, match="set the instance to the CRN"):
        connect(bad_instance)
