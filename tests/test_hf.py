"""Tests for hybrid/hf.py and K-FAC on transformers' Conv1D: save and load (whole model and
adapter), half precision, resizing, K-FAC factors against nn.Linear and curvlinops, and
``transformers.Trainer`` with the hybrid optimizer, resumed from its checkpoint."""

import copy
import importlib.util
import logging
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import circuits
import hybrid
from hybrid.errors import InputError
from hybrid.models import QuantumProjection
from hybrid.optim.kfac import KFACPreconditioner

transformers = pytest.importorskip("transformers")  # the hf extra; installed by .ci/run
from transformers.pytorch_utils import Conv1D  # noqa: E402

from hybrid import hf  # noqa: E402

with warnings.catch_warnings():  # linear_operator, a curvlinops dependency, uses torch.jit.script
    warnings.simplefilter("ignore", DeprecationWarning)
    from curvlinops import KFACLinearOperator

V = 50  # vocabulary of the small models

pytestmark = pytest.mark.usefixtures("one_thread")


def base_model(arch: str, hidden: int = 16, vocab: int = V) -> nn.Module:
    """A tiny causal LM from a config, no dropout (so runs repeat exactly), seeded."""
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_layer=2, n_embd=hidden, n_head=2, vocab_size=vocab, n_positions=16,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=0, eos_token_id=0)  # fmt: skip
    else:
        config = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=1, vocab_size=vocab,
                                          max_position_embeddings=16, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(config)


def quantum_model(arch: str, **kwargs) -> nn.Module:
    model = base_model(arch, **kwargs)
    return hf.attach_quantum_head(model, circuits.StronglyEntangling(3, 1, measure="all"))


def tokens(seed: int = 0, shape=(2, 8)) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def logits(model, x) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x).logits


ARCHS = ["gpt2", "llama"]


# -- save and load ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_then_from_pretrained_is_the_same_model(arch, tmp_path):
    model = quantum_model(arch).double()
    x = tokens()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text().count('"template": "strongly_entangling"') == 1
    loaded = hf.from_pretrained(tmp_path, dtype=torch.float64)
    assert isinstance(loaded.lm_head, QuantumProjection) and type(loaded).__name__ == type(model).__name__
    assert loaded.lm_head.circuit.weights.dtype == torch.float64
    assert torch.equal(logits(loaded, x), logits(model, x))
    assert loaded.generate(x[:1, :3], max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_from_pretrained_of_a_model_without_a_quantum_head_says_so(tmp_path):
    base_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(InputError, match="no quantum head .*AutoModelForCausalLM"):
        hf.from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_loads_onto_a_fresh_base_and_refuses_a_mismatched_one(arch, tmp_path):
    base_model(arch).double().save_pretrained(tmp_path / "base")
    model = quantum_model(arch).double()
    nn.init.normal_(model.lm_head.from_circuit.weight)  # trained-looking weights, not the initialization
    hf.save_quantum_head(model, tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == sorted([hf.ADAPTER_CONFIG, hf.ADAPTER_WEIGHTS])
    fresh = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float64)
    hf.load_quantum_head(fresh, tmp_path / "head")
    x = tokens()
    assert torch.equal(logits(fresh, x), logits(model, x))

    for wrong in (base_model(arch, hidden=32), base_model(arch, vocab=V + 1)):
        with pytest.raises(InputError, match=r"hidden size 16 and vocabulary 50 .* but this \w+ has"):
            hf.load_quantum_head(wrong, tmp_path / "head")
        assert isinstance(wrong.lm_head, nn.Linear)  # refused before anything changed
    with pytest.raises(InputError, match="holds no quantum head"):
        hf.load_quantum_head(base_model(arch), tmp_path)
    with pytest.raises(InputError, match="no quantum head to save"):
        hf.save_quantum_head(base_model(arch), tmp_path / "none")


def test_a_circuit_that_is_not_a_template_is_refused():
    class Mine(circuits.StronglyEntangling):
        pass

    with pytest.raises(InputError, match="not a template of circuits.TEMPLATES"):
        hf.attach_quantum_head(base_model("gpt2"), Mine(2, 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_resize_token_embeddings_resizes_the_circuits_output_layer(arch, tmp_path):
    model = quantum_model(arch)
    old = model.lm_head.from_circuit.weight.detach().clone()
    model.resize_token_embeddings(V + 6, mean_resizing=False)
    head = model.lm_head
    assert isinstance(head, QuantumProjection) and head.from_circuit.out_features == V + 6
    assert torch.equal(head.from_circuit.weight[:V], old) and model.config.vocab_size == V + 6
    assert logits(model, tokens()).shape == (2, 8, V + 6)
    model.save_pretrained(tmp_path)
    assert torch.equal(logits(hf.from_pretrained(tmp_path), tokens()), logits(model, tokens()))


# -- precision and devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantum_layer_converts_at_its_boundary(dtype):
    layer = hybrid.QuantumLayer(circuits.StronglyEntangling(3, 2, measure="all"))
    half = copy.deepcopy(layer).to(dtype)
    x = torch.randn(5, 3).to(dtype)
    reference = copy.deepcopy(layer)
    reference.weights.data = half.weights.data.float()  # the same rounded angles, in float32
    out = half(x)
    assert out.dtype == dtype
    assert torch.equal(out, reference(x.float()).to(dtype))  # up to float32, simulate, back down


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_run_forward_backward_close_to_float32(arch, dtype):
    model = quantum_model(arch)
    x = tokens()
    full = model(x, labels=x)
    full.loss.backward()
    half = copy.deepcopy(model).to(dtype)
    out = half(x, labels=x)
    out.loss.backward()
    assert out.logits.dtype == dtype and half.lm_head.circuit.weights.grad.dtype == dtype
    # bfloat16 keeps 8 bits of mantissa, float16 11: logits of size ~1 agree to a few 1e-2 / 1e-3
    tol = 5e-2 if dtype == torch.bfloat16 else 5e-3
    torch.testing.assert_close(out.logits.float(), full.logits.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(out.loss.float(), full.loss.detach(), atol=tol, rtol=0)
    grads = [(p.grad, q.grad) for p, q in zip(model.parameters(), half.parameters(), strict=True)]
    assert all(q is not None and torch.isfinite(q).all() for _, q in grads)
    circuit = model.lm_head.circuit.weights.grad, half.lm_head.circuit.weights.grad.float()
    torch.testing.assert_close(circuit[1], circuit[0], atol=10 * tol, rtol=0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_runs_the_circuit_in_float32(arch):
    model = quantum_model(arch)
    x = tokens()
    reference = model(x).logits.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=x)
    out.loss.backward()
    assert model.lm_head.circuit.weights.grad is not None
    torch.testing.assert_close(out.logits.float(), reference, atol=5e-2, rtol=0)


def test_device_map_and_dtype_reach_the_head(tmp_path):
    pytest.importorskip("accelerate")
    quantum_model("llama").save_pretrained(tmp_path)
    model = hf.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map="cpu")
    assert {p.dtype for p in model.lm_head.parameters()} == {torch.bfloat16}
    assert model.lm_head.circuit.weights.device.type == "cpu"
    assert model(tokens()).logits.dtype == torch.bfloat16


# -- K-FAC on Conv1D ------------------------------------------------------------------------------------------


def as_linear(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv1D replaced by the nn.Linear that computes the same map."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, Conv1D):
            linear = nn.Linear(m.nx, m.nf, dtype=m.weight.dtype)
            linear.weight.data, linear.bias.data = m.weight.data.T.clone(), m.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


class LogitsClassesFirst(nn.Module):
    """(B, T) tokens -> (B, V, T) logits, for curvlinops' CrossEntropyLoss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits.transpose(1, 2)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_conv1d_factors_equal_nn_linear_and_curvlinops(approx):
    model = base_model("gpt2", hidden=8).double()
    for m in model.modules():  # away from the 0.02 initialization, where q/k gradients nearly vanish
        if isinstance(m, Conv1D):
            nn.init.normal_(m.weight, std=0.5)
            nn.init.normal_(m.bias, std=0.1)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    linear = as_linear(model)
    x, y = tokens(1, (3, 6)), tokens(2, (3, 6))
    ours = {}
    for net in (model, linear):
        kfac = KFACPreconditioner(LogitsClassesFirst(net), approx=approx, curvature_every=1, inverse_every=1)
        nn.functional.cross_entropy(kfac_model_logits(net, x), y).backward()
        kfac.precondition(lr=0.1)
        ours[net is model] = kfac
        kfac.remove()
    conv, lin = ours[True], ours[False]
    assert list(conv.layers) == list(lin.layers) and "model.transformer.h.0.attn.c_attn" in conv.layers
    for name, (A, G) in conv.factors().items():
        torch.testing.assert_close(A, lin.A[name], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(G, lin.G[name], rtol=1e-8, atol=1e-12)
        layer = conv.layers[name]  # the preconditioned gradient, transposed back
        grad = layer.weight.grad.T if isinstance(layer, Conv1D) else layer.weight.grad
        torch.testing.assert_close(grad, lin.layers[name].weight.grad, rtol=1e-8, atol=1e-12)

    wrapped = LogitsClassesFirst(linear)
    layers = {n: m for n, m in wrapped.named_modules() if isinstance(m, nn.Linear)}
    params = [p for m in layers.values() for p in m.parameters()]
    op = KFACLinearOperator(wrapped, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="empirical",
                            kfac_approx=approx, separate_weight_and_bias=False,
                            check_deterministic=False)  # fmt: skip
    op @ torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)  # computes the factors
    state = op.state_dict()
    for name, (A, G) in conv.factors().items():
        torch.testing.assert_close(A, state["input_covariances"][name], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(G, state["gradient_covariances"][name], rtol=1e-8, atol=1e-12)


def kfac_model_logits(net, x):
    return net(x).logits.transpose(1, 2)  # (B, V, T)


def test_build_optimizer_preconditions_gpt2_projections_and_reports_the_rest(caplog):
    model = quantum_model("gpt2")
    with caplog.at_level(logging.INFO, logger="hybrid.optim.kfac"):
        optimizer = hybrid.build_optimizer(model, hybrid.OptimConfig(name="hybrid"))
    kfac = optimizer.preconditioners["kfac"]
    conv = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv) == 8 and set(kfac.layers) == {*conv, "lm_head.from_circuit"}
    assert len(kfac.params) == 2 * len(kfac.layers)
    assert kfac.excluded["lm_head.to_angles"] == "excluded by name"
    assert kfac.excluded["transformer.wte"].startswith("Embedding: not a linear layer")
    assert kfac.excluded["lm_head.circuit"].startswith("QuantumLayer: not a linear layer")
    (line,) = [r.getMessage() for r in caplog.records if "preconditions" in r.getMessage()]
    assert line.startswith("KFACPreconditioner preconditions 9 layers; left to the other optimizers: ")
    assert "transformer.wte, transformer.wpe (Embedding" in line

    eigen = hybrid.build_optimizer(quantum_model("gpt2"), hybrid.OptimConfig(name="eigen_adam"))
    assert "transformer.h.0.attn.c_attn" in eigen.preconditioners["eigen_adam"].layers  # Conv1D too


# -- the example -------------------------------------------------------------------------------------------


def test_the_example_fine_tunes_saves_reloads_and_generates(tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / "hf_finetune.py"
    spec = importlib.util.spec_from_file_location("hf_finetune", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--steps", "2", "--batch-size", "2", "--block-size", "8", "--qubits", "2",
                           "--out", str(tmp_path / "run")])  # fmt: skip
    assert result["same_logits"] and len(result["losses"]) == 2 and len(result["sample"]) == 8
    assert (tmp_path / "run" / "head" / hf.ADAPTER_WEIGHTS).is_file()


# -- transformers.Trainer ---------------------------------------------------------------------------------------


def trainer(model, out, steps: int = 20):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, V, (8,), generator=g) for _ in range(64)]
    data = [{"input_ids": r, "labels": r} for r in rows]
    cfg = hybrid.OptimConfig(name="hybrid", warmup_steps=2)
    optimizer = hybrid.build_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: hybrid.optim.registry.lr_factor(s, cfg, steps))
    args = transformers.TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, save_steps=10,
                                          report_to=hf.report_to("csv"), use_cpu=True, seed=0,
                                          disable_tqdm=True)  # fmt: skip
    return transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, schedule))


def test_report_to_names_train_logs_trackers_to_training_arguments(tmp_path):
    assert hf.report_to("csv") == "none" and hf.report_to("tensorboard,mlflow") == ["tensorboard", "mlflow"]
    args = transformers.TrainingArguments(str(tmp_path), report_to=hf.report_to("csv,tensorboard"), use_cpu=True)
    assert args.report_to == ["tensorboard"]
    assert transformers.TrainingArguments(str(tmp_path), report_to=hf.report_to(""), use_cpu=True).report_to == []
    with pytest.raises(InputError, match="report_to: unknown sink 'wandb'; choose from csv, tensorboard, mlflow"):
        hf.report_to("wandb")


def test_trainer_trains_with_the_hybrid_optimizer_and_resumes_exactly(tmp_path):
    model = quantum_model("gpt2")
    before = copy.deepcopy(model)
    run = trainer(model, tmp_path / "a")
    run.train()
    optimizer = run.optimizer.optimizer  # accelerate wraps it
    kfac, qng = optimizer.preconditioners["kfac"], optimizer.preconditioners["qng"]
    assert kfac.steps == 20 and kfac.A and qng.calls == 20
    assert model.lm_head.circuit.last_inputs is not None
    assert not torch.equal(model.lm_head.circuit.weights, before.lm_head.circuit.weights)
    saved = torch.load(tmp_path / "a" / "checkpoint-10" / "optimizer.pt", weights_only=True)  # as Trainer loads it
    assert saved["preconditioners"]["kfac"]["steps"] == 10

    resumed = trainer(before, tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-10"))
    for (name, p), q in zip(model.named_parameters(), before.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_eigen_adam_takes_gpt2s_conv1d_layers_and_matches_the_equivalent_linear_model():
    """Adam in K-FAC's eigenbasis writes a Conv1D's update in its own (d_in, d_out) layout."""
    from transformers.pytorch_utils import Conv1D

    from hybrid.optim.eigen_adam import EigenAdamKFAC

    torch.manual_seed(0)
    conv = Conv1D(4, 3).double()  # weight (3, 4): y = x W + b
    linear = torch.nn.Linear(3, 4).double()
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    opts = [EigenAdamKFAC(m, lr=1e-2, basis_every=2, curvature_every=1) for m in (conv, linear)]
    x = torch.randn(16, 3, dtype=torch.float64)
    for _ in range(5):
        for m, opt in zip((conv, linear), opts, strict=True):
            m(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert "" in opts[0].eigen_adam.layers  # the Conv1D itself is preconditioned
    torch.testing.assert_close(conv.weight.T, linear.weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(conv.bias, linear.bias, rtol=1e-10, atol=1e-12)
