"""A quantum LM head on any Hugging Face causal LM: attach, save, load, resize, fine-tune.

    model = AutoModelForCausalLM.from_config(LlamaConfig(...))   # or .from_pretrained(local folder)
    attach_quantum_head(model, circuits.StronglyEntangling(4, 2))
    logits = model(input_ids).logits          # (B, T, vocab_size), through the circuit
    model.save_pretrained("out")              # config.json gains a "quantum_head" entry
    model = hybrid.hf.from_pretrained("out")  # the same model, quantum head included
    save_quantum_head(model, "head")          # the head alone, as an adapter (JSON + safetensors)
    TrainingArguments(..., report_to=report_to("tensorboard"))  # train.log's trackers, by transformers' names
    load_quantum_head(base_model, "head")     # onto a base model of the same hidden size and vocabulary

The head is ``hybrid.models.QuantumProjection``: hidden -> pi*tanh(Linear) -> circuit ->
Linear -> logits. Attaching it gives the model a subclass of its own class
(``quantum_class``) whose output embeddings are the head's last ``nn.Linear``
(``from_circuit``), so ``resize_token_embeddings`` resizes that layer, and whose constructor
rebuilds the head from ``config.quantum_head``, so ``from_pretrained`` restores it with all
of transformers' loading options (``dtype``, ``device_map``, sharded files).
``AutoModelForCausalLM.from_pretrained`` on the same folder gives the base model with a fresh
linear head (and reports the head's weights as unused): load with ``from_pretrained`` here.

Needs the optional extra ``hf`` (transformers, safetensors); imported inside the functions.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

from torch import nn

from circuits import TEMPLATES
from hybrid.backends import get_backend
from hybrid.errors import InputError
from hybrid.models import QuantumProjection
from hybrid.sinks import sink_names

CONFIG_KEY = "quantum_head"  # the entry of config.json that describes the circuit
ADAPTER_CONFIG = "quantum_head_config.json"
ADAPTER_WEIGHTS = "quantum_head.safetensors"


# -- the circuit as JSON ----------------------------------------------------------------------


def describe_circuit(circuit, backend: str = "default.qubit") -> dict:
    """``{"template", "n_qubits", "n_layers", ...every option of its constructor, "backend"}``:
    what ``build_circuit`` needs to make the same circuit again.

    Raises:
        InputError: ``circuit`` is not a template of ``circuits.TEMPLATES``.
    """
    cls = type(circuit)
    if TEMPLATES.get(getattr(cls, "name", None)) is not cls:
        raise InputError(f"{circuit!r} is not a template of circuits.TEMPLATES ({', '.join(sorted(TEMPLATES))}), "
                         "so it cannot be written to config.json; use one of those")  # fmt: skip
    options = list(inspect.signature(cls.__init__).parameters)[1:]  # n_qubits, n_layers, measure, ...
    return {"template": cls.name, **{k: getattr(circuit, k) for k in options}, "backend": get_backend(backend).name}


def build_circuit(spec: dict):
    """The circuit and backend name ``describe_circuit`` wrote.

    Raises:
        InputError: an unknown template or option, or values the template refuses.
    """
    spec = dict(spec)
    name, backend = spec.pop("template", None), spec.pop("backend", "default.qubit")
    if name not in TEMPLATES:
        raise InputError(f"quantum_head names circuit template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    try:
        return TEMPLATES[name](**spec), get_backend(backend).name
    except (TypeError, ValueError) as error:
        raise InputError(f"quantum_head {spec} does not describe a {name} circuit: {error}") from None


# -- the model class that carries the head ----------------------------------------------------------


class QuantumHeadMixin:
    """Mixed into a causal LM class by ``quantum_class``: the head from ``config.quantum_head``,
    and ``from_circuit`` as the output embeddings.

    ``set_output_embeddings`` takes a ``QuantumProjection`` (a new head) or an ``nn.Linear``
    (a new ``from_circuit``, as ``resize_token_embeddings`` makes)."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        spec = getattr(config, CONFIG_KEY, None)
        if spec:
            circuit, backend = build_circuit(spec)
            d_in, vocab = _head_shape(self)
            super().set_output_embeddings(QuantumProjection(d_in, vocab, circuit, backend))

    @property
    def quantum_head(self) -> QuantumProjection:
        return super().get_output_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        head = self.quantum_head  # an nn.Linear only while the base class's __init__ runs
        return head.from_circuit if isinstance(head, QuantumProjection) else head

    def set_output_embeddings(self, new: nn.Module) -> None:
        if isinstance(new, QuantumProjection) or not isinstance(self.quantum_head, QuantumProjection):
            super().set_output_embeddings(new)
        else:
            self.quantum_head.from_circuit = new


@functools.cache
def quantum_class(base: type) -> type:
    """``base`` (a ``PreTrainedModel`` class) with ``QuantumHeadMixin``. It keeps ``base``'s
    name and module, so ``save_pretrained`` writes ``base``'s architecture to config.json and
    transformers finds ``base``'s source where it looks for it."""
    if issubclass(base, QuantumHeadMixin):
        return base
    attrs = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__}
    return type(base.__name__, (QuantumHeadMixin, base), attrs)


def _head_shape(model: nn.Module) -> tuple[int, int]:
    """``(d_in, vocab)`` of ``model``'s output layer: the features it reads and the logits it writes."""
    if isinstance(model, QuantumHeadMixin):
        old = model.quantum_head
        if isinstance(old, QuantumProjection):
            return old.to_angles.in_features, old.from_circuit.out_features
    else:
        old = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if old is None or getattr(old, "weight", None) is None or old.weight.dim() != 2:
        raise InputError(f"{type(model).__name__} has no output embedding layer to replace; "
                         "use a causal LM such as AutoModelForCausalLM gives")  # fmt: skip
    vocab, d_in = old.weight.shape
    return d_in, vocab


def attach_quantum_head(model: nn.Module, circuit, backend: str = "default.qubit") -> nn.Module:
    """Replace ``model``'s output layer by hidden -> pi*tanh(Linear) -> circuit -> Linear -> logits.

    The head takes the old output layer's device and dtype. The original head is usually tied
    to the input embedding; the new one is not, and the config is told so
    (``tie_word_embeddings = False``); ``config.quantum_head`` records the circuit for
    ``save_pretrained``, and the model's class becomes ``quantum_class(type(model))``.

    Args:
        model: a ``transformers`` causal LM (anything with ``config`` and ``get_output_embeddings``/
            ``set_output_embeddings``).
        circuit: a template from ``circuits.TEMPLATES``.
        backend: a name in ``hybrid.backends.BACKENDS``.

    Returns:
        ``model``, modified in place.

    Raises:
        InputError: the model has no output layer, or the circuit is not a template.
    """
    spec = describe_circuit(circuit, backend)
    d_in, vocab = _head_shape(model)
    old = model.get_output_embeddings()
    head = QuantumProjection(d_in, vocab, circuit, backend).to(old.weight.device, old.weight.dtype)
    model.__class__ = quantum_class(type(model))
    setattr(model.config, CONFIG_KEY, spec)
    model.config.tie_word_embeddings = False
    model.set_output_embeddings(head)
    return model


# -- saving and loading -------------------------------------------------------------------------------


def from_pretrained(path: str | Path, **kwargs) -> nn.Module:
    """The model ``save_pretrained`` wrote to ``path``, quantum head included: like
    ``AutoModelForCausalLM.from_pretrained(path, **kwargs)``, with the same keyword arguments
    (``dtype``, ``device_map``, ...).

    Raises:
        InputError: ``path``'s config.json has no ``quantum_head`` entry.
    """
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    if not getattr(config, CONFIG_KEY, None):
        raise InputError(f"{path} has no quantum head ({CONFIG_KEY!r} is not in its config.json); "
                         "load it with transformers.AutoModelForCausalLM.from_pretrained")  # fmt: skip
    base = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    return quantum_class(base).from_pretrained(path, config=config, **kwargs)


def save_quantum_head(model: nn.Module, directory: str | Path) -> Path:
    """Write the quantum head alone: ``quantum_head_config.json`` (the circuit, the base's
    hidden size and vocabulary) and ``quantum_head.safetensors`` (the head's weights).

    Returns:
        The directory.

    Raises:
        InputError: ``model`` has no quantum head.
    """
    from safetensors.torch import save_file

    if not isinstance(model, QuantumHeadMixin):
        raise InputError(f"{type(model).__name__} has no quantum head to save; attach one with attach_quantum_head")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d_in, vocab = _head_shape(model)
    config = {
        CONFIG_KEY: getattr(model.config, CONFIG_KEY), "hidden_size": d_in, "vocab_size": vocab,
        "base_model": getattr(model.config, "_name_or_path", "") or None, "model_type": model.config.model_type,
    }  # fmt: skip
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().cpu().contiguous() for k, v in model.quantum_head.state_dict().items()}
    save_file(state, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    return directory


def load_quantum_head(model: nn.Module, directory: str | Path) -> nn.Module:
    """Put the head ``save_quantum_head`` wrote on ``model`` (the base it was trained on, or one
    of the same hidden size and vocabulary), on the device and in the dtype of its output layer.

    Returns:
        ``model``, modified in place.

    Raises:
        InputError: the adapter's files are missing, or its hidden size or vocabulary differs
            from ``model``'s (checked before ``model`` is touched).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{directory} holds no quantum head: {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} are "
                         "written by hybrid.hf.save_quantum_head")  # fmt: skip
    config = json.loads((directory / ADAPTER_CONFIG).read_text())
    d_in, vocab = _head_shape(model)
    if (config["hidden_size"], config["vocab_size"]) != (d_in, vocab):
        raise InputError(
            f"the quantum head in {directory} was saved from a model with hidden size {config['hidden_size']} "
            f"and vocabulary {config['vocab_size']} ({config.get('base_model') or config.get('model_type')}), "
            f"but this {type(model).__name__} has {d_in} and {vocab}; load it onto the base model it was trained on"
        )
    circuit, backend = build_circuit(config[CONFIG_KEY])
    attach_quantum_head(model, circuit, backend)
    head = model.quantum_head
    state = load_file(directory / ADAPTER_WEIGHTS, device=str(head.from_circuit.weight.device))
    head.load_state_dict({k: v.to(head.from_circuit.weight.dtype) for k, v in state.items()})
    return model


# -- the tokenizer of a hybrid run ------------------------------------------------------------


def load_tokenizer(path: str | Path):
    """The BPE of a ``hybrid train`` run folder (or a ``hybrid tune`` study folder, or the
    ``tokenizer.json`` itself) as a ``transformers.PreTrainedTokenizerFast``: the same tokens,
    never retrained. Byte-level, so every text encodes and ``decode`` gives it back.

    Raises:
        InputError: no ``tokenizer.json`` there (a character-level run has none).
    """
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise InputError(f"{path} has no tokenizer.json; train with --set data.tokenizer=bpe, or pass the file itself")
    return PreTrainedTokenizerFast(tokenizer_file=str(file), clean_up_tokenization_spaces=False)


# -- transformers.Trainer ---------------------------------------------------------------------


def report_to(log: str) -> list[str] | str:
    """``TrainingArguments(report_to=...)`` for a ``train.log`` value such as ``"tensorboard,mlflow"``:
    its trackers under transformers' names (the same), or ``"none"``. Pass it explicitly:
    transformers 4 reports to every installed integration by default. ``csv`` has no
    counterpart: ``Trainer`` keeps its own log history in ``trainer_state.json``.

    Raises:
        InputError: an unknown sink name, as ``train.log`` refuses it.
    """
    return sink_names(log, "report_to")[1:] or "none"
