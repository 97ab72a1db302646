"""HybridGPT: a small decoder-only transformer with variational circuits where the config says.

Read top to bottom: attention, MLP, the quantum projection, a block, the whole model.

    quantum = "head": hidden -> Linear -> pi*tanh -> circuit -> Linear -> vocabulary logits
    quantum = "ffn":  the last block's MLP(x) gets a parallel path through a circuit
    quantum = "none": the classical baseline, trained by the same loop

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

QUANTUM_PLACES = ("head", "ffn", "none")


@dataclass
class ModelConfig:
    """``[model]``: the transformer's shape and where the circuit goes."""

    block_size: int = 32  # context length in characters
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 64  # width of the residual stream
    dropout: float = 0.0  # 0 keeps runs bit-for-bit reproducible
    quantum: str = "head"  # where circuits go: head (LM head), ffn (last block's MLP), none

    def validate(self, prefix: str = "model.") -> ModelConfig:
        for key in ("block_size", "n_layer", "n_head", "n_embd"):
            check_number(f"{prefix}{key}", getattr(self, key), low=1, integer=True)
        check_number(f"{prefix}dropout", self.dropout, low=0, high=1, high_open=True)
        check_choice(f"{prefix}quantum", self.quantum, QUANTUM_PLACES)
        if self.n_embd % self.n_head:
            raise InputError(f"{prefix}n_embd ({self.n_embd}) must be a multiple of {prefix}n_head ({self.n_head})")
        return self


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
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
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)  # (B, nh, T, hs)
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


class QuantumProjection(nn.Module):
    """Features -> angles -> circuit -> features, through a circuit of ``n_qubits`` wires.

    The classical map to angles is ``pi * tanh(to_angles(x))``: each angle lies in (-pi, pi),
    one period of every rotation gate, and stays differentiable everywhere.
    """

    def __init__(
        self, in_features: int, out_features: int, circuit, backend: str = "default.qubit",
        execution: ExecutionConfig | None = None,
    ):  # fmt: skip
        super().__init__()
        self.to_angles = nn.Linear(in_features, circuit.n_inputs)
        self.circuit = QuantumLayer(circuit, backend, execution)
        self.from_circuit = nn.Linear(circuit.n_outputs, out_features)
        self.reset_angles()

    def reset_angles(self) -> None:
        """Initialize ``to_angles`` wider than a usual layer: unit-variance features then give
        angles of about +-1.4 rad, so the circuit sees varied inputs from the first step."""
        nn.init.normal_(self.to_angles.weight, std=0.5 / math.sqrt(self.to_angles.in_features))
        nn.init.zeros_(self.to_angles.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = math.pi * torch.tanh(self.to_angles(x))  # (B, T, n_inputs), radians in (-pi, pi)
        z = self.circuit(angles)  # (B, T, n_outputs), expectation values in [-1, 1]
        return self.from_circuit(z)  # (B, T, out_features)


class QuantumMLP(nn.Module):
    """The classical MLP plus a parallel quantum path: MLP(x) + QuantumProjection(x)."""

    def __init__(self, cfg: ModelConfig, circuit, backend: str, execution: ExecutionConfig | None = None):
        super().__init__()
        self.mlp = MLP(cfg)
        self.quantum = QuantumProjection(cfg.n_embd, cfg.n_embd, circuit, backend, execution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.quantum(x)  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mlp: nn.Module):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
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
        circuit: which template, its size and backend (ignored when ``cfg.quantum == "none"``).
        execution: shots, noise and job options of sampling backends (``hybrid.backends``).

    Raises:
        InputError: a setting of ``cfg`` or ``circuit`` out of range (see their ``validate``).
    """

    def __init__(
        self, cfg: ModelConfig, vocab_size: int, circuit: CircuitConfig | None = None,
        execution: ExecutionConfig | None = None,
    ):  # fmt: skip
        super().__init__()
        self.cfg = cfg.validate()
        circuit = circuit or CircuitConfig()
        template = circuit.validate().template() if cfg.quantum != "none" else None
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        mlps = [MLP(cfg) for _ in range(cfg.n_layer)]
        if cfg.quantum == "ffn":
            mlps[-1] = QuantumMLP(cfg, template, circuit.backend, execution)
        self.blocks = nn.ModuleList(Block(cfg, mlp) for mlp in mlps)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        if cfg.quantum == "head":
            self.lm_head = QuantumProjection(cfg.n_embd, vocab_size, template, circuit.backend, execution)
        else:
            self.lm_head = nn.Linear(cfg.n_embd, vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, QuantumProjection):
            module.reset_angles()  # runs after its children got the 0.02 below
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
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
        return self.lm_head(self.ln_f(x))  # (B, T, V)

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
