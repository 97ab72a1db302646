"""Attach a quantum LM head to someone else's causal language model (Hugging Face).

    model = GPT2LMHeadModel(GPT2Config(...))
    attach_quantum_head(model, circuits.StronglyEntangling(4, 2))
    logits = model(input_ids).logits          # (B, T, vocab_size), through the circuit

Needs the optional extra ``hf`` (transformers); this module itself imports nothing from it.
"""

from __future__ import annotations

from torch import nn

from hybrid.models import QuantumProjection


def attach_quantum_head(model: nn.Module, circuit, backend: str = "default.qubit") -> nn.Module:
    """Replace ``model``'s output layer by hidden -> pi*tanh(Linear) -> circuit -> Linear -> logits.

    The original head is usually tied to the input embedding; the new one is not, and the
    config is told so (``tie_word_embeddings = False``) so that a later ``tie_weights()``
    leaves it alone.

    Args:
        model: a ``transformers`` causal LM (anything with ``config.hidden_size``,
            ``config.vocab_size`` and ``set_output_embeddings``).
        circuit: a template from ``circuits``.
        backend: a name in ``hybrid.backends.BACKENDS``.

    Returns:
        ``model``, modified in place.
    """
    config = model.config
    head = QuantumProjection(config.hidden_size, config.vocab_size, circuit, backend)
    config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return model
