"""Fine-tune a Hugging Face causal LM with a quantum LM head on a text file; save, reload, generate.

    python examples/hf_finetune.py                               # a small GPT-2 from a config, built-in corpus
    python examples/hf_finetune.py --arch llama --steps 600      # a small Llama instead
    python examples/hf_finetune.py --model path/to/local/model --data notes.txt --out runs/hf
    python examples/hf_finetune.py --tokenizer runs/s --data notes.txt   # the BPE of a hybrid train run

Without ``--model`` the model is built from a small config and reads characters (the vocabulary
is the text's characters, or with ``--tokenizer`` the BPE a ``hybrid train --set data.tokenizer=bpe``
run trained, ``hf.load_tokenizer``); with ``--model`` it is loaded from a local folder with its tokenizer.
Nothing is downloaded. The default 300 steps take about half a minute on 2 CPU cores and reach
about 2.6 nats/char on the built-in corpus (its floor is 0.445): enough to see the mechanics,
not a trained model (the quantum head needs thousands of steps; README, K-FAC). The optimizer
is the toolkit's default, K-FAC on the linear layers
(GPT-2's Conv1D projections included), QNG on the circuit, AdamW on the rest:
``hybrid.build_optimizer(model, hybrid.OptimConfig(name="hybrid"))``. notebooks/06_hf_finetune.ipynb runs
the same steps with plots.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import circuits
import hybrid
from hybrid import hf
from hybrid.corpus import generate
from hybrid.optim.registry import lr_factor
from hybrid.tokenizer import CharTokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a local folder with a causal LM and its tokenizer (default: a config)")
    parser.add_argument("--arch", choices=("gpt2", "llama"), default="gpt2", help="the config's architecture")
    parser.add_argument("--tokenizer", help="a hybrid run folder (or tokenizer.json) whose BPE to use")
    parser.add_argument("--data", help="a UTF-8 text file (default: the built-in corpus, written to a temp file)")
    parser.add_argument("--out", default="runs/hf_finetune", help="where the model and the head adapter go")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--qubits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def small_config(arch: str, vocab_size: int, block_size: int) -> transformers.PretrainedConfig:
    """A two-layer model of width 64: trains on 2 CPU cores in a minute or two."""
    if arch == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=vocab_size, n_positions=block_size,
                                       bos_token_id=0, eos_token_id=0)  # fmt: skip
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                    num_key_value_heads=1, vocab_size=vocab_size, max_position_embeddings=block_size,
                                    bos_token_id=0, eos_token_id=0)  # fmt: skip


def load(args, text: str):
    """The base model, and the text's token ids with a decoder back to text."""
    if args.model:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
        return model, torch.tensor(tokenizer(text)["input_ids"]), tokenizer.decode
    if args.tokenizer:
        tokenizer = hf.load_tokenizer(args.tokenizer)
        model = transformers.AutoModelForCausalLM.from_config(small_config(args.arch, len(tokenizer), args.block_size))
        return model, torch.tensor(tokenizer(text)["input_ids"]), tokenizer.decode
    tokenizer = CharTokenizer.from_text(text)
    model = transformers.AutoModelForCausalLM.from_config(small_config(args.arch, len(tokenizer), args.block_size))
    return model, tokenizer.encode(text), tokenizer.decode


def batch(ids: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, T) random windows of the token ids."""
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator)
    return torch.stack([ids[s : s + block_size] for s in starts.tolist()])  # (B, T)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    if args.data is None:  # the built-in corpus, as a file like any other
        args.data = str(Path(tempfile.mkdtemp()) / "corpus.txt")
        Path(args.data).write_text(generate(60_000, seed=args.seed))
    text = Path(args.data).read_text(encoding="utf-8")
    model, ids, decode = load(args, text)
    hf.attach_quantum_head(model, circuits.StronglyEntangling(args.qubits, 2, measure="all"))

    cfg = hybrid.OptimConfig(name="hybrid")  # K-FAC + QNG + AdamW
    optimizer = hybrid.build_optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, args.steps))
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    model.train()
    for step in range(args.steps):
        x = batch(ids, args.batch_size, args.block_size, generator)  # (B, T)
        loss = model(input_ids=x, labels=x).loss  # the model shifts the labels itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")

    out = Path(args.out)
    model.save_pretrained(out / "model")  # the whole model: config.json records the circuit
    hf.save_quantum_head(model, out / "head")  # the head alone, an adapter for the same base
    reloaded = hf.from_pretrained(out / "model").eval()
    model.eval()
    x = batch(ids, 2, args.block_size, generator)
    with torch.no_grad():
        same = torch.equal(reloaded(x).logits, model(x).logits)
    prompt = ids[: args.block_size // 4][None]  # (1, T0)
    sample = reloaded.generate(prompt, max_new_tokens=args.block_size - prompt.shape[1], do_sample=True, top_k=10,
                               pad_token_id=0)  # fmt: skip
    print(f"reloaded from {out / 'model'}: same logits {same}\n{decode(sample[0].tolist())!r}")
    return {"losses": losses, "same_logits": same, "sample": decode(sample[0].tolist()), "out": out}


if __name__ == "__main__":
    main()
