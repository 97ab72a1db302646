"""Backend objects by name: IBM fake devices, Aer simulators with or without a device's noise.

    fake_backend_class("fake_manila")   # -> FakeManilaV2, without building every fake device
    aer_simulator("fake_manila")        # AerSimulator with FakeManilaV2's noise model and target
    noiseless(FakeManilaV2())           # the device's target and gates, no noise

``qiskit_ibm_runtime.fake_provider`` holds snapshots of real IBM devices (their coupling
maps, gates, error rates). Listing them through ``QiskitRuntimeLocalService.backends()``
builds all sixty, so names are resolved to classes here instead.
"""

from __future__ import annotations

import functools

from hybrid.errors import InputError

INSTALL_IBM = 'pip install "hybrid-qlm[ibm]"'


@functools.cache
def fake_backend_classes() -> dict[str, type]:
    """``{"fake_manila": FakeManilaV2, ...}`` for every device in the runtime's fake provider."""
    try:
        from qiskit_ibm_runtime import fake_provider
    except ImportError:
        raise InputError(f"fake IBM devices need qiskit-ibm-runtime; install it with {INSTALL_IBM}") from None
    classes = {}
    for attr in dir(fake_provider):
        if attr.startswith("Fake") and attr not in ("FakeProviderForBackendV2", "FakeFractionalBackend"):
            stem = attr.removeprefix("Fake").removesuffix("V2").lower()
            classes[f"fake_{stem}"] = getattr(fake_provider, attr)
    return classes


def fake_backend_class(name: str) -> type:
    """The fake-provider class of device ``name`` (e.g. ``fake_manila``).

    Raises:
        InputError: no such fake device (the message suggests small ones).
    """
    classes = fake_backend_classes()
    if name not in classes:
        raise InputError(
            f"unknown fake device {name!r}; choose one from qiskit_ibm_runtime.fake_provider, "
            f"e.g. fake_manila (5 qubits), fake_lima, fake_belem ({len(classes)} in all)"
        )
    return classes[name]


def check_noise(backend, noise: str) -> None:
    """Raise InputError unless ``noise`` is "" or a fake device and ``backend`` is qiskit.aer."""
    if noise and backend.service != "aer":
        raise InputError(f"execution.noise applies to qiskit.aer only, not {backend.name}; "
                         "drop it, or use --backend qiskit.aer --noise fake_<device>")  # fmt: skip
    if noise:
        fake_backend_class(noise)


def check_width(backend, noise: str, n_qubits: int) -> None:
    """Raise InputError when a circuit of ``n_qubits`` wires cannot fit the fake device that
    ``backend`` (``fake_<device>``) or its ``noise`` (``qiskit.aer``) names, before anything is
    transpiled. Hardware is checked when the service reports its device."""
    device = backend.name if backend.service == "local" else noise if backend.service == "aer" else ""
    if not device:
        return
    width = fake_backend_class(device)().num_qubits
    if n_qubits > width:
        raise InputError(f"circuit.n_qubits={n_qubits} does not fit {device}, which has {width} qubits; "
                         f"use --qubits {width} or fewer, or a larger device")  # fmt: skip


def fake_backend(name: str):
    """A new instance of fake device ``name`` (its noise model is built on first use)."""
    return fake_backend_class(name)()


def aer_simulator(noise: str = ""):
    """An ``AerSimulator``: ideal and all-to-all when ``noise`` is "", else with the noise
    model, coupling map and basis gates of fake device ``noise`` (e.g. ``fake_manila``)."""
    from qiskit_aer import AerSimulator

    if not noise:
        return AerSimulator()
    if not noise.startswith("fake_"):
        raise InputError(f"execution.noise must name an IBM fake device such as fake_manila, got {noise!r}")
    return AerSimulator.from_backend(fake_backend(noise))


def noiseless(backend):
    """``backend``'s target (qubits, coupling map, basis gates) on an ideal Aer simulator:
    shot noise only, for separating it from device noise."""
    from qiskit_aer import AerSimulator

    return AerSimulator.from_backend(backend, noise_model=None)
