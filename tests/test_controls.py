"""Tests for the controls that ask whether the circuit matters: a parameter-matched classical block
in the circuit's place, no entanglers, frozen circuit weights; each with every optimizer it can use."""

import math

import pytest
import torch

import circuits
from circuits.templates import StronglyEntangling
from hybrid import QuantumLayer
from hybrid.cli import main
from hybrid.config import CircuitConfig, ModelConfig, apply_overrides, validate
from hybrid.errors import InputError
from hybrid.models import ClassicalControl, HybridGPT, QuantumProjection, control_shape
from hybrid.optim import build_optimizer
from hybrid.train import train_step
from tests.conftest import tiny_config

CONTROLS = {  # name -> overrides
    "circuit": {},
    "classical": {"model.quantum_control": "classical"},
    "no_entanglement": {"circuit.entangle": False},
    "frozen": {"circuit.trainable": False},
}
OPTIMIZERS = ("hybrid", "kfac", "qng", "adamw", "muon")
REFUSED = {
    ("classical", "qng"): "classical has none; use --optimizer adamw",
    ("frozen", "qng"): "circuit.trainable=false freezes them; use --optimizer adamw",
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name, n_qubits, n_layers, measure",
    [("strongly_entangling", 4, 2, "Z"), ("strongly_entangling", 4, 3, "all"), ("hardware_efficient", 4, 2, "Z"),
     ("data_reuploading", 3, 2, "ZZ"), ("hardware_efficient", 6, 3, "Z"), ("strongly_entangling", 3, 4, "all")],
)  # fmt: skip
def test_the_control_has_the_circuits_widths_and_parameter_count_within_10_percent(name, n_qubits, n_layers, measure):
    template = circuits.make_circuit(name, n_qubits, n_layers, measure)
    quantum = QuantumProjection(16, 16, template)
    control = QuantumProjection(16, 16, template, control="classical")
    assert isinstance(control.circuit, ClassicalControl)
    circuit_params = n_params(quantum.circuit)
    assert abs(n_params(control.circuit) - circuit_params) <= 0.1 * circuit_params
    x = torch.randn(2, 5, 16)
    assert control(x).shape == quantum(x).shape == (2, 5, 16)
    angles = torch.rand(7, template.n_inputs) * 6 - 3
    assert control.circuit(angles).shape == quantum.circuit(angles).shape == (7, template.n_outputs)
    assert control.circuit(angles).abs().max() < 1  # bounded like expectation values


def test_the_control_is_within_10_percent_wherever_an_mlp_can_be():
    """Over every template and size up to 5 qubits and 3 layers: the control's count is the nearest
    any MLP n_inputs -> h -> n_outputs (h <= 60, either bias) reaches, found here by brute force."""
    misses = []
    for name in sorted(circuits.TEMPLATES):
        for n_qubits in range(2, 6):
            for n_layers in (1, 2, 3):
                for measure in ("Z", "ZZ", "all"):
                    template = circuits.make_circuit(name, n_qubits, n_layers, measure)
                    n_in, n_out, target = template.n_inputs, template.n_outputs, math.prod(template.weight_shape)
                    counts = [nn_count(n_in, h, n_out, b1, b2) for h in range(1, 61) for b1 in (0, 1) for b2 in (0, 1)]
                    best = min(abs(c - target) for c in counts)
                    got = n_params(ClassicalControl(n_in, n_out, target))
                    assert abs(got - target) == best, (name, n_qubits, n_layers, measure)
                    if best > 0.1 * target:
                        misses.append((name, n_qubits, n_layers, measure))
    assert ("strongly_entangling", 4, 2, "all") in misses  # the default head: see the next test
    assert len(misses) < 60  # of 180: mostly measure="all", whose 2^n - 1 outputs outgrow the weights


def nn_count(n_in: int, hidden: int, n_out: int, bias_1: int, bias_2: int) -> int:
    return (n_in + bias_1) * hidden + (hidden + bias_2) * n_out  # two nn.Linear layers


def test_the_default_head_circuit_is_the_one_the_control_cannot_match_and_it_takes_the_nearest():
    """4 qubits, 2 layers, 15 Z strings: 24 weights; a 4 -> 15 MLP has 20 with one hidden unit
    (and one bias) and 38 with two, as the README and ClassicalControl say."""
    template = CircuitConfig().template()
    assert math.prod(template.weight_shape) == 24
    assert control_shape(4, 15, 24) == (1, True, False)
    assert n_params(ClassicalControl(4, 15, 24)) == 20
    # the count is the nearest over every hidden width and bias choice
    counts = [h * 19 + h * b1 + 15 * b2 for h in range(1, 6) for b1 in (0, 1) for b2 in (0, 1)]
    assert min(abs(c - 24) for c in counts) == 4


@pytest.mark.parametrize("quantum", ["head", "ffn", "attn"])
def test_the_classical_control_replaces_every_circuit_and_nothing_else(quantum):
    base = {"model.quantum": quantum, "model.n_layer": 2}
    cfg_q, cfg_c = tiny_config(**base), tiny_config(**base, **CONTROLS["classical"])
    torch.manual_seed(0)
    q = HybridGPT(cfg_q.model, 11, cfg_q.circuit)
    torch.manual_seed(0)
    c = HybridGPT(cfg_c.model, 11, cfg_c.circuit)
    assert not [m for m in c.modules() if isinstance(m, QuantumLayer)]
    swapped = {n for n, m in q.named_modules() if isinstance(m, QuantumLayer)}
    assert swapped == {n for n, m in c.named_modules() if isinstance(m, ClassicalControl)}
    assert len(swapped) == (3 if quantum == "attn" else 1)

    def outside(model):
        return {n: p.shape for n, p in model.named_parameters() if not any(n.startswith(s) for s in swapped)}

    assert outside(q) == outside(c)
    assert c(torch.randint(0, 11, (2, 16))).shape == (2, 16, 11)


def test_without_entanglers_the_state_is_a_product_state():
    """Independent check: on a product state every Z string is the product of its single-qubit Zs."""
    torch.manual_seed(1)
    for entangle in (False, True):
        layer = QuantumLayer(StronglyEntangling(3, 2, measure="all", entangle=entangle)).double()
        z = layer(torch.rand(5, 3, dtype=torch.float64) * 6)  # (5, 7): Z0 Z1 Z2 Z0Z1 Z0Z2 Z1Z2 Z0Z1Z2
        products = torch.stack(
            [z[:, 0] * z[:, 1], z[:, 0] * z[:, 2], z[:, 1] * z[:, 2], z[:, 0] * z[:, 1] * z[:, 2]], 1
        )
        assert torch.allclose(z[:, 3:], products, atol=1e-12) == (not entangle)


def test_the_config_passes_entangle_to_the_template():
    cfg = tiny_config(**CONTROLS["no_entanglement"], **{"model.quantum": "ffn"})
    model = HybridGPT(cfg.model, 11, cfg.circuit)
    layer = next(m for m in model.modules() if isinstance(m, QuantumLayer))
    assert layer.circuit.entangle is False and "entangle=False" in repr(layer.circuit)


@pytest.mark.parametrize("quantum", ["head", "attn"])
def test_frozen_circuits_keep_their_random_initialization(quantum):
    cfg = tiny_config(**{"model.quantum": quantum, "optim.name": "adamw"})
    frozen_cfg = apply_overrides(cfg, CONTROLS["frozen"])
    torch.manual_seed(3)
    trained = HybridGPT(cfg.model, 11, cfg.circuit)
    torch.manual_seed(3)
    frozen = HybridGPT(frozen_cfg.model, 11, frozen_cfg.circuit)
    layers = [m for m in frozen.modules() if isinstance(m, QuantumLayer)]
    initial = [layer.weights.detach().clone() for layer in layers]
    for a, b in zip(initial, [m.weights for m in trained.modules() if isinstance(m, QuantumLayer)], strict=True):
        assert torch.equal(a, b)  # the same random draw as the trained circuit starts from
    assert not any(layer.weights.requires_grad for layer in layers)
    optimizer = build_optimizer(frozen, frozen_cfg.optim)
    batch = torch.randint(0, 11, (4, 16)), torch.randint(0, 11, (4, 16))
    for _ in range(3):
        train_step(frozen, optimizer, batch, grad_clip=1.0)
    assert all(torch.equal(w, layer.weights) for w, layer in zip(initial, layers, strict=True))
    assert all(layer.last_inputs is not None for layer in layers)  # the circuits did run


@pytest.mark.parametrize("quantum", ["head", "ffn", "attn"])
@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_control_trains_with_every_optimizer_it_can(quantum, control, optimizer):
    small = {"model.n_embd": 16, "model.block_size": 8, "circuit.n_qubits": 3, "circuit.n_layers": 1,
             "optim.qng.metric_samples": 8}  # fmt: skip
    overrides = {"model.quantum": quantum, "optim.name": optimizer, **small, **CONTROLS[control]}
    if (control, optimizer) in REFUSED:
        with pytest.raises(InputError, match=REFUSED[control, optimizer]):
            validate(tiny_config(**overrides))
        return
    cfg = validate(tiny_config(**overrides))
    model = HybridGPT(cfg.model, 11, cfg.circuit)
    opt = build_optimizer(model, cfg.optim)
    has_qng = "qng" in opt.preconditioners
    assert has_qng == (control in ("circuit", "no_entanglement") and optimizer in ("hybrid", "qng"))
    batch = torch.randint(0, 11, (4, 8)), torch.randint(0, 11, (4, 8))
    losses = [train_step(model, opt, batch, cfg.optim.grad_clip) for _ in range(2)]
    assert all(math.isfinite(loss) for loss in losses)


class RotationsOnly(StronglyEntangling):
    """A template without two-qubit gates (for the refusal below)."""

    name = "rotations_only"
    has_entanglers = False


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.quantum_control": "classical", "optim.name": "qng"},
         "--optimizer qng trains circuits with qng, but model.quantum_control=classical has none; use --optimizer"),
        ({"model.quantum_control": "classical", "optim.circuit": "metric_adam"},
         "model.quantum_control=classical has none"),
        ({"circuit.trainable": False, "optim.name": "qng"}, "circuit.trainable=false freezes them; use --optimizer"),
        ({"circuit.trainable": False, "optim.circuit": "metric_adam"}, "circuit.trainable=false freezes them"),
        ({"circuit.name": "rotations_only", "circuit.entangle": False},
         "circuit.entangle=false: rotations_only has no two-qubit gates to drop; set circuit.entangle=true"),
        ({"circuit.entangle": False, "circuit.n_qubits": 1}, "circuit.entangle=false on 1 qubit"),
        ({"circuit.entangle": False, "model.quantum_control": "classical", "optim.name": "adamw"},
         "use one of the two controls at a time"),
        ({"model.quantum": "none", "model.quantum_control": "classical"}, "but model.quantum is none"),
        ({"model.quantum": "none", "circuit.trainable": False, "optim.name": "adamw"},
         "circuit.trainable=false changes the circuit, but model.quantum is none"),
        ({"model.quantum_control": "quantum"}, "model.quantum_control must be one of , classical"),
    ],
)  # fmt: skip
def test_combinations_that_make_no_sense_end_in_one_line(monkeypatch, tmp_path, capsys, overrides, message):
    monkeypatch.setitem(circuits.TEMPLATES, RotationsOnly.name, RotationsOnly)
    with pytest.raises(InputError, match=message):
        validate(apply_overrides(tiny_config(), overrides))
    flags = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={str(value).lower()}")]
    assert main(["train", "--out", str(tmp_path / "run"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_python_api_refuses_what_the_cli_refuses():
    with pytest.raises(InputError, match="use one of the two controls at a time"):
        HybridGPT(ModelConfig(quantum_control="classical"), 11, CircuitConfig(entangle=False))
    with pytest.raises(InputError, match="circuit.entangle must be true or false"):
        CircuitConfig(entangle="no").validate()
