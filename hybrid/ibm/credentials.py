"""IBM Quantum credentials: found where qiskit-ibm-runtime looks, never shown.

The token comes from the runtime's own discovery, in its order: the environment
(``QISKIT_IBM_TOKEN``, with ``QISKIT_IBM_INSTANCE``, ``QISKIT_IBM_CHANNEL``, ``QISKIT_IBM_URL``),
then the account saved with ``QiskitRuntimeService.save_account`` in
``~/.qiskit/qiskit-ibm.json``. This module never prints, logs or stores it: every message
built from a library error passes through ``scrub``, and failures become one-line
``ServiceError``s that say how to fix them.

``connect`` builds the service lazily, on the first job for an ``ibm_<device>`` backend;
building ``QiskitRuntimeService`` goes to the network even with a CRN, so tests inject a
service instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hybrid.errors import InputError

ACCOUNT_FILE = Path("~/.qiskit/qiskit-ibm.json")
SAVE_HINT = (
    "save one with QiskitRuntimeService.save_account(token=..., instance=..., set_as_default=True) "
    "(README, 'IBM Quantum hardware') or set QISKIT_IBM_TOKEN and QISKIT_IBM_INSTANCE"
)


class ServiceError(InputError):
    """IBM Quantum could not be reached, refused the credentials, or refused a request."""


def secrets() -> list[str]:
    """Every token this process could send: the environment's and the saved accounts'."""
    found = [os.environ.get("QISKIT_IBM_TOKEN", "")]
    try:
        accounts = json.loads(ACCOUNT_FILE.expanduser().read_text())
        found += [a.get("token", "") for a in accounts.values() if isinstance(a, dict)]
    except (OSError, ValueError, AttributeError):
        pass
    return [s for s in found if len(s) >= 4]


def scrub(text: str) -> str:
    """``text`` with every known token replaced by ``***``."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return text


def connect(factory=None):
    """The ``QiskitRuntimeService`` on the account qiskit-ibm-runtime finds (see the module docstring);
    ``hybrid.ibm.jobs.IBMService`` wraps it.

    Args:
        factory: builds the service; default ``QiskitRuntimeService`` with no arguments.

    Raises:
        ServiceError: qiskit-ibm-runtime is missing, no account is saved or set, the service is
            unreachable, or it rejects the token. The message never contains the token.
    """
    try:
        from qiskit_ibm_runtime import QiskitRuntimeService
        from qiskit_ibm_runtime.accounts import AccountManager, AccountNotFoundError
    except ImportError:
        raise ServiceError(
            'IBM hardware needs qiskit-ibm-runtime; install it with pip install "hybrid-qlm[ibm]"'
        ) from None
    if factory is None:
        try:
            AccountManager.get()  # offline: is there an account at all?
        except AccountNotFoundError:
            raise ServiceError(f"no IBM Quantum account found; {SAVE_HINT}") from None
        except Exception as error:  # a malformed file or variable
            raise ServiceError(f"the IBM Quantum account is invalid ({reason(error)}); {SAVE_HINT}") from None
        factory = QiskitRuntimeService
    return ibm_call(factory, "connect to IBM Quantum")


def ibm_call(fn, what: str):
    """``fn()``, with IBM's and the network's errors turned into one-line ``ServiceError``s;
    ``what`` completes "while trying to ..."."""
    try:
        return fn()
    except InputError:
        raise
    except Exception as error:
        raise ServiceError(describe(error, what)) from None


def describe(error: BaseException, what: str) -> str:
    """One line saying what went wrong while trying to ``what`` and how to fix it (scrubbed)."""
    chain = _chain(error)
    names = {type(e).__name__ for e in chain}
    codes = {getattr(e, "status_code", None) or getattr(e, "code", None) for e in chain}
    if names & {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "MaxRetryError",
                "NameResolutionError", "NewConnectionError", "gaierror", "ProxyError", "SSLError"}:  # fmt: skip
        return (f"cannot reach IBM Quantum to {what} ({reason(chain[-1])}); check the network and any "
                "HTTPS_PROXY, then run the same command again")  # fmt: skip
    if names & {"IBMNotAuthorizedError", "InvalidAccountError"} or codes & {400, 401, 403}:
        fix = SAVE_HINT.removeprefix("save one with ")
        return (f"IBM Quantum rejected the credentials while trying to {what} ({reason(error)}); "
                f"create an API key at quantum.cloud.ibm.com and {fix}")  # fmt: skip
    if names & {"AttributeError", "TypeError"} and "connect" in what:  # qiskit-ibm-runtime parsing a bad instance
        return (f"IBM Quantum could not use the account's instance while trying to {what} ({reason(error)}); "
                "set the instance to the CRN shown on quantum.cloud.ibm.com (Instances page)")  # fmt: skip
    if "QiskitBackendNotFoundError" in names:
        return (f"IBM Quantum has no such backend for this account while trying to {what}; list the "
                "available ones with QiskitRuntimeService().backends()")  # fmt: skip
    return f"IBM Quantum failed to {what}: {reason(error)}"


def _chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def reason(error: BaseException) -> str:
    """``Type: first line of the message``, scrubbed of tokens."""
    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return scrub(f"{type(error).__name__}: {text}" if text else type(error).__name__)
