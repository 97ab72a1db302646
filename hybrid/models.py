"""HybridGPT: a small decoder-only transformer with variational circuits where the config says.

Read top to bottom: attention, MLP, the classical control, the quantum projection, quantum
self-attention, a block, the whole model.

    quantum = "head": hidden -> Linear -> pi*tanh -> circuit -> Linear -> vocabulary logits
    quantum = "ffn":  the last block's MLP(x) gets a parallel path through a circuit
    quantum = "attn": the last block's attention is QSANN's Gaussian quantum self-attention
    quantum = "none": the classical baseline, trained by the same loop

``quantum_blocks`` picks other blocks for ffn and attn. The controls that ask whether the
circuit matters are settings, not other models: ``quantum_control = "classical"`` puts a
parameter-matched MLP where each circuit would be (``ClassicalControl``), ``[circuit]
entangle = false`` drops the circuit's two-qubit gates, ``[circuit] trainable = false``
freezes its weights at their random initialization.

Every projection is an explicit ``nn.Linear`` (no ``nn.MultiheadAttention``, no fused qkv)
so K-FAC's module hooks see each one, and the embedding and output weights are untied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.backends import ExecutionConfig
from hybrid.errors import InputError, check_choice, check_number
from hybrid.quantum import CircuitConfig, QuantumLayer

QUANTUM_PLACES = ("head", "ffn", "none", "attn")
CONTROLS = ("", "classical")
PARAMETRIZATIONS = ("standard", "mup")


@dataclass
class ModelConfig:
    """``[model]``: the transformer's shape and where the circuit goes."""

    block_size: int = 32  # context length in tokens (characters with data.tokenizer = char)
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 64  # width of the residual stream
    dropout: float = 0.0  # 0 keeps runs bit-for-bit reproducible
    quantum: str = "head"  # where circuits go: head (LM head), ffn (a block's MLP), attn (a block's attention), none
    quantum_blocks: str = ""  # ffn and attn: comma-separated block indices that get circuits, e.g. "0,1"; "": the last
    quantum_control: str = ""  # "classical": a parameter-matched MLP where each circuit would be; "": circuits
    parametrization: str = "standard"  # standard, or mup (maximal update: hyperparameters transfer across n_embd)
    base_width: int = 64  # mup: the n_embd at which mup equals standard (where the hyperparameters were tuned)

    def validate(self, prefix: str = "model.") -> ModelConfig:
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            check_number(f"{prefix}{key}", getattr(self, key), low=1, integer=True)
        check_number(f"{prefix}dropout", self.dropout, low=0, high=1, high_open=True)
        check_choice(f"{prefix}quantum", self.quantum, QUANTUM_PLACES)
        check_choice(f"{prefix}quantum_control", self.quantum_control, CONTROLS)
        check_choice(f"{prefix}parametrization", self.parametrization, PARAMETRIZATIONS)
        check_number(f"{prefix}base_width", self.base_width, low=1, integer=True)
        if self.parametrization == "mup" and self.base_width % self.n_head:
            raise InputError(f"{prefix}base_width ({self.base_width}) must be a multiple of {prefix}n_head "
                             f"({self.n_head}) under mup (the base head size sets attention's 1/d scale); "
                             f"use base_width={self.n_head * max(1, round(self.base_width / self.n_head))}")
        if self.n_embd % self.n_head:
            raise InputError(f"{prefix}n_embd ({self.n_embd}) must be a multiple of {prefix}n_head ({self.n_head})")
        if self.quantum_control and self.quantum == "none":
            raise InputError(f"{prefix}quantum_control={self.quantum_control} replaces circuits, but {prefix}quantum "
                             "is none; use --quantum head, ffn or attn, or drop quantum_control")  # fmt: skip
        if not isinstance(self.quantum_blocks, str):
            raise InputError(f'{prefix}quantum_blocks must be a string such as "0,1", got {self.quantum_blocks!r}')
        if self.quantum_blocks.strip() and self.quantum not in ("ffn", "attn"):
            raise InputError(f"{prefix}quantum_blocks picks blocks for ffn and attn, but {prefix}quantum is "
                             f"{self.quantum}; leave quantum_blocks empty or use --quantum ffn or attn")  # fmt: skip
        self.block_indices(prefix)
        return self

    @property
    def width_mult(self) -> float:
        """n_embd / base_width under mup (muP's width multiplier m), 1 under standard."""
        return self.n_embd / self.base_width if self.parametrization == "mup" else 1.0

    def block_indices(self, prefix: str = "model.") -> list[int]:
        """The blocks that get circuits under ffn and attn: ``quantum_blocks`` parsed, or the last."""
        text = self.quantum_blocks.strip()
        if not text:
            return [self.n_layer - 1]
        try:
            indices = [int(part) for part in text.split(",")]
        except ValueError:
            raise InputError(f"{prefix}quantum_blocks takes comma-separated block indices, got {text!r}; "
                             'e.g. "0,1"') from None  # fmt: skip
        bad = [i for i in indices if not 0 <= i < self.n_layer]
        if bad or len(set(indices)) != len(indices):
            raise InputError(f"{prefix}quantum_blocks must name distinct blocks in 0..{self.n_layer - 1} "
                             f"(n_layer={self.n_layer}), got {text!r}")  # fmt: skip
        return sorted(indices)


def check_controls(cfg: ModelConfig, circuit: CircuitConfig) -> None:
    """The combinations of ``[model]`` and ``[circuit]`` that make no sense (``validate(cfg)`` and
    ``HybridGPT`` both run this).

    Raises:
        InputError: naming the keys and the fix.
    """
    if cfg.quantum == "none" and not (circuit.entangle and circuit.trainable):
        key = "circuit.entangle" if not circuit.entangle else "circuit.trainable"
        raise InputError(f"{key}=false changes the circuit, but model.quantum is none; "
                         f"use --quantum head, ffn or attn, or drop {key}")  # fmt: skip
    if cfg.quantum_control == "classical" and not circuit.entangle:
        raise InputError("circuit.entangle=false drops a circuit's two-qubit gates, but model.quantum_control="
                         "classical has no circuit; use one of the two controls at a time")  # fmt: skip


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention; scores q.k / sqrt(d_head) under the standard parametrization,
    q.k * sqrt(d_base) / d_head under mup (muP's 1/d scaling, equal to the standard at base_width)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        hs, base = cfg.n_embd // cfg.n_head, cfg.base_width // cfg.n_head
        self.scale = math.sqrt(base) / hs if cfg.parametrization == "mup" else None  # None: SDPA's 1/sqrt(hs)
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.out = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, time, channels (n_embd)
        hs = C // self.n_head
        q = self.query(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, C); gelu not in place: hooks need x


def control_shape(n_inputs: int, n_outputs: int, n_params: int) -> tuple[int, bool, bool]:
    """``(hidden, bias_1, bias_2)`` of the MLP n_inputs -> hidden -> n_outputs whose parameter
    count ``hidden * (n_inputs + n_outputs) + hidden * bias_1 + n_outputs * bias_2`` is nearest
    ``n_params`` (ties: the smaller count). One hidden unit is the least, so a circuit with fewer
    than ``n_inputs + n_outputs`` weights gets a larger control."""
    widest = max(1, n_params // (n_inputs + n_outputs) + 1)
    shapes = [(h, b1, b2) for h in range(1, widest + 1) for b1 in (True, False) for b2 in (True, False)]

    def count(shape):
        h, b1, b2 = shape
        return h * (n_inputs + n_outputs) + h * b1 + n_outputs * b2

    return min(shapes, key=lambda shape: (abs(count(shape) - n_params), count(shape)))


class ClassicalControl(nn.Module):
    """The classical control of a circuit: same input and output widths, about its parameter count.

        z = tanh(proj(tanh(fc(angles))))      # (..., n_inputs) -> (..., n_outputs), in (-1, 1) like <Z>

    It sits where a ``QuantumLayer`` would (``QuantumProjection.circuit``), so a model with it
    differs from the quantum one only in that block. Its hidden width and biases bring its
    parameter count nearest the circuit's (``control_shape``): within 10% whenever integer
    widths allow it. A 4-qubit circuit with all 15 Z-string readouts has 24 weights (2 layers of
    ``strongly_entangling``); a 4 -> 15 MLP has 20 with one hidden unit and 38 with two, so there
    the control has 20 (17% fewer) and a one-unit bottleneck.

    Args:
        n_inputs, n_outputs: the circuit's widths.
        n_params: the circuit's weight count.
    """

    def __init__(self, n_inputs: int, n_outputs: int, n_params: int):
        super().__init__()
        hidden, bias_1, bias_2 = control_shape(n_inputs, n_outputs, n_params)
        self.n_inputs, self.n_outputs, self.n_params = n_inputs, n_outputs, n_params
        self.fc = nn.Linear(n_inputs, hidden, bias=bias_1)
        self.proj = nn.Linear(hidden, n_outputs, bias=bias_2)

    def reset_parameters(self) -> None:
        """PyTorch's default (fan-in uniform) initialization: like a circuit's expectation values at
        random weights, the outputs start spread over (-1, 1), not near 0 as with std 0.02."""
        self.fc.reset_parameters()
        self.proj.reset_parameters()

    def forward(self, angles: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(torch.tanh(self.fc(angles))))  # (..., n_outputs)


class QuantumProjection(nn.Module):
    """Features -> angles -> circuit -> features, through a circuit of ``n_qubits`` wires.

    The classical map to angles is ``pi * tanh(to_angles(x))``: each angle lies in (-pi, pi),
    one period of every rotation gate, and stays differentiable everywhere.

    Args:
        in_features, out_features: the widths of ``x`` and of the result.
        circuit: a template from ``circuits``.
        backend, execution: where the circuit runs (see ``QuantumLayer``).
        control: ``"classical"`` puts a ``ClassicalControl`` in the circuit's place.
        trainable: False freezes the circuit's (or the control's) weights at their initialization.
        input_multiplier: ``x`` is multiplied by it before ``to_angles``: muP's readout multiplier
            1 / width_mult, since ``to_angles`` maps the width to a fixed number of angles.
        validated: the settings were checked already (``hybrid.config.validate``; see ``QuantumLayer``).
    """

    def __init__(
        self, in_features: int, out_features: int, circuit, backend: str = "default.qubit",
        execution: ExecutionConfig | None = None, *, control: str = "", trainable: bool = True,
        input_multiplier: float = 1.0, validated: bool = False,
    ):  # fmt: skip
        super().__init__()
        if not validated:
            check_choice("control", control, CONTROLS)
        self.input_multiplier = input_multiplier
        self.to_angles = nn.Linear(in_features, circuit.n_inputs)
        if control == "classical":
            self.circuit = ClassicalControl(circuit.n_inputs, circuit.n_outputs, math.prod(circuit.weight_shape))
        else:
            self.circuit = QuantumLayer(circuit, backend, execution, validated=validated)
        self.circuit.requires_grad_(trainable)
        self.from_circuit = nn.Linear(circuit.n_outputs, out_features)
        self.reset_angles()

    def reset_angles(self) -> None:
        """Initialize ``to_angles`` wider than a usual layer: unit-variance features then give
        angles of about +-1.4 rad, so the circuit sees varied inputs from the first step."""
        nn.init.normal_(self.to_angles.weight, std=0.5 / math.sqrt(self.to_angles.in_features))
        nn.init.zeros_(self.to_angles.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_multiplier != 1.0:
            x = x * self.input_multiplier  # before the layer, so K-FAC's hooks see the input it multiplies
        angles = math.pi * torch.tanh(self.to_angles(x))  # (B, T, n_inputs), radians in (-pi, pi)
        z = self.circuit(angles)  # (B, T, n_outputs), expectation values in [-1, 1]
        return self.from_circuit(z)  # (B, T, out_features)


class QuantumMLP(nn.Module):
    """The classical MLP plus a parallel quantum path: MLP(x) + QuantumProjection(x)."""

    def __init__(
        self, cfg: ModelConfig, circuit, backend: str, execution: ExecutionConfig | None = None, *,
        control: str = "", trainable: bool = True, validated: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.mlp = MLP(cfg)
        self.quantum = QuantumProjection(cfg.n_embd, cfg.n_embd, circuit, backend, execution, control=control,
                                         trainable=trainable, input_multiplier=1 / cfg.width_mult,
                                         validated=validated)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.quantum(x)  # (B, T, C)


class QuantumSelfAttention(nn.Module):
    r"""Causal Gaussian-projected quantum self-attention, after QSANN's quantum self-attention layer
    (Li, Zhao and Wang, *Quantum Self-Attention Neural Networks for Text Classification*, arXiv:2205.05625).

    Queries, keys and values are the measured outputs of three circuits applied to every token,
    each a ``QuantumProjection`` (Linear -> pi*tanh -> circuit -> Linear): one batched circuit
    call over all B*T tokens per projection. The weights are QSANN's Gaussian projection of the
    distance between query and key instead of a dot product, normalized over the past:

    .. math:: a_{ij} = \frac{\exp(-\lVert q_i - k_j \rVert^2)}{\sum_{j' \le i} \exp(-\lVert q_i - k_{j'} \rVert^2)}
              \ (j \le i), \qquad y_i = \sum_{j \le i} a_{ij} v_j

    As in QSANN the values come from a circuit and there is one head. Two departures: the causal
    mask (QSANN classifies whole sentences), and a linear map after each measurement
    (``from_circuit``), which for queries and keys learns the Gaussian's metric; QSANN's fixed
    width is that map at the identity.
    """

    def __init__(
        self, cfg: ModelConfig, circuit, backend: str, execution: ExecutionConfig | None = None, *,
        control: str = "", trainable: bool = True, validated: bool = False,
    ):  # fmt: skip
        super().__init__()
        options = {"control": control, "trainable": trainable, "input_multiplier": 1 / cfg.width_mult,
                   "validated": validated}  # fmt: skip
        self.query = QuantumProjection(cfg.n_embd, circuit.n_outputs, circuit, backend, execution, **options)
        self.key = QuantumProjection(cfg.n_embd, circuit.n_outputs, circuit, backend, execution, **options)
        self.value = QuantumProjection(cfg.n_embd, cfg.n_embd, circuit, backend, execution, **options)
        self.dropout = nn.Dropout(cfg.dropout)
        causal = torch.tril(torch.ones(cfg.block_size, cfg.block_size, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)  # (block_size, block_size): j <= i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]  # x: (B, T, C)
        q = self.query(x)  # (B, T, d): one circuit call on (B, T, n_inputs)
        k = self.key(x)  # (B, T, d)
        v = self.value(x)  # (B, T, C)
        distance = (q[:, :, None, :] - k[:, None, :, :]).pow(2).sum(-1)  # (B, T, T): ||q_i - k_j||^2
        scores = (-distance).masked_fill(~self.causal[:T, :T], float("-inf"))  # (B, T, T)
        weights = self.dropout(F.softmax(scores, dim=-1))  # (B, T, T): exp(-d^2) over the past, normalized
        return weights @ v  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mlp: nn.Module, attn: nn.Module | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = attn if attn is not None else CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class HybridGPT(nn.Module):
    """Decoder-only character LM; ``cfg.quantum`` places the circuit (see module docstring).

    Args:
        cfg: model shape and where the circuit goes.
        vocab_size: number of token ids.
        circuit: which template, its size and backend, whether it entangles and trains
            (ignored when ``cfg.quantum == "none"``).
        execution: shots, noise and job options of sampling backends (``hybrid.backends``).
        validated: ``cfg``, ``circuit`` and ``execution`` were checked already
            (``hybrid.config.validate``, as ``hybrid train`` does before any work): not again here.

    Raises:
        InputError: a setting of ``cfg`` or ``circuit`` out of range (see their ``validate``),
            or a combination that makes no sense (``check_controls``).
    """

    def __init__(
        self, cfg: ModelConfig, vocab_size: int, circuit: CircuitConfig | None = None,
        execution: ExecutionConfig | None = None, *, validated: bool = False,
    ):  # fmt: skip
        super().__init__()
        circuit = circuit or CircuitConfig()
        if not validated:  # the Python API; hybrid train checked every section once already
            cfg.validate()
            check_controls(cfg, circuit)
            if cfg.quantum != "none":
                circuit.validate()
        self.cfg = cfg
        template = circuit.template() if cfg.quantum != "none" else None
        where = (circuit.backend, execution)
        options = {"control": cfg.quantum_control, "trainable": circuit.trainable, "validated": validated}
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        chosen = cfg.block_indices() if cfg.quantum in ("ffn", "attn") else []
        blocks = []
        for i in range(cfg.n_layer):
            quantum = cfg.quantum if i in chosen else "none"
            mlp = QuantumMLP(cfg, template, *where, **options) if quantum == "ffn" else MLP(cfg)
            attn = QuantumSelfAttention(cfg, template, *where, **options) if quantum == "attn" else None
            blocks.append(Block(cfg, mlp, attn))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.readout_multiplier = 1 / cfg.width_mult  # muP: the head's input; 1 under standard
        if cfg.quantum == "head":
            self.lm_head = QuantumProjection(cfg.n_embd, vocab_size, template, *where, **options,
                                             input_multiplier=self.readout_multiplier)  # fmt: skip
        else:
            self.lm_head = nn.Linear(cfg.n_embd, vocab_size)
        self.apply(self._init_weights)
        if cfg.parametrization == "mup":  # variance 1 / fan_in: the standard's std 0.02 at base_width
            with torch.no_grad():
                for weight in self.hidden_matrices():
                    weight.mul_(1 / math.sqrt(cfg.width_mult))  # rescaled, not redrawn: the same random stream

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The weights whose both dimensions grow with n_embd (attention's and the MLPs' projections):
        under mup their initial std is 0.02 / sqrt(width_mult) and their Adam-like rates scale as
        1 / width_mult. Embeddings, the readouts (lm_head, to_angles), biases and norms keep theirs."""
        hidden = [m for block in self.blocks for m in block.modules() if isinstance(m, (CausalSelfAttention, MLP))]
        return [lin.weight for m in hidden for lin in m.modules() if isinstance(lin, nn.Linear)]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, QuantumProjection):
            module.reset_angles()  # runs after its children got the 0.02 below
        elif isinstance(module, ClassicalControl):
            module.reset_parameters()  # likewise
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) next-token logits."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.ln_f(x)
        if self.cfg.quantum != "head" and self.readout_multiplier != 1.0:
            x = x * self.readout_multiplier  # muP's readout multiplier, before the layer (K-FAC's hooks see it)
        return self.lm_head(x)  # (B, T, V)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, n_new: int, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """Append ``n_new`` sampled tokens to ``idx`` (B, T0); returns (B, T0 + n_new)."""
        for _ in range(n_new):
            context = idx[:, -self.cfg.block_size :]  # (B, <= block_size)
            logits = self(context)[:, -1, :] / max(temperature, 1e-6)  # (B, V)
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
        return idx


# -- the language-model loss, for HybridGPT and Hugging Face causal LMs ----------------------------


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-character cross-entropy in nats. Works for ``HybridGPT`` (returns logits) and
    Hugging Face causal LMs (return an object with ``.logits``)."""
    return next_token_loss(lm_logits(model, x), y)


def lm_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T, V) logits of ``HybridGPT`` or a Hugging Face causal LM."""
    logits = model(x)
    return getattr(logits, "logits", logits)  # (B, T, V)


def next_token_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats of (B, T, V) logits against (B, T) next-character ids."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
