"""The training loop and the run folder it writes.

    run folder/
      config.toml       the resolved config
      metrics.csv       one row per evaluation: step, train_loss, val_loss, floor_gap, lr, seconds, ...
      checkpoint.pt     model, optimizer, schedule, RNG states (written atomically)
      loss_curve.png    train and validation loss against step
      sample.txt        text generated at the end
      tokenizer.json    with data.tokenizer = "bpe": the tokenizer, trained once, used by --resume and sample
      test.json         the held-out test split, evaluated once at the end (test_bpc), and the validation
                        text's unigram and bigram character entropies
      diagnostics.csv   with train.curvature_every: curvature statistics per tracked step (spectra/ beside it)
      events.out.tfevents.*, mlflow.db, mlflow_run_id   with train.log: TensorBoard, MLflow (hybrid.tracking)

The loop's order is the data flow: batch -> model -> loss -> gradients -> clip -> update.
``train(cfg, out, resume=True)`` continues a killed run from its last checkpoint and ends with
the parameters an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hybrid.checkpoint import atomic_write, folder_lock, load_checkpoint, save_checkpoint
from hybrid.config import Config, config_from_dict, load_config, save_config, validate
from hybrid.data import Dataset, load_dataset
from hybrid.diagnostics import reset_tracking, track
from hybrid.errors import InputError
from hybrid.models import HybridGPT, lm_logits, lm_loss, next_token_loss
from hybrid.optim import HybridOptimizer, build_optimizer, lr_factor
from hybrid.optim.reduce import local_only
from hybrid.parallel import World, check_world, mean_over_ranks, on_main, process_group, shard, wrap
from hybrid.plots import plot_loss_curve
from hybrid.quantum import QuantumLayer
from hybrid.sinks import CsvSink, MetricsLog, ProgressSink, sink_names
from hybrid.tables import read_table, write_table
from hybrid.tokenizer import BpeTokenizer, CharTokenizer

CONFIG, METRICS, CHECKPOINT, CURVE, SAMPLE, TOKENIZER, TEST = (
    "config.toml",
    "metrics.csv",
    "checkpoint.pt",
    "loss_curve.png",
    "sample.txt",
    "tokenizer.json",
    "test.json",
)


@dataclass
class RunSummary:
    step: int
    train_loss: float
    val_loss: float
    floor: float | None
    seconds: float
    out: Path
    test_bpc: float = math.nan  # the test split's loss in bits per character (NaN on ranks other than 0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean loss over fixed batches, in eval mode (no dropout, no QNG input capture)."""
    was_training = model.training
    model.eval()
    loss = sum(lm_loss(model, x, y).item() for x, y in batches) / len(batches)
    model.train(was_training)
    return loss


@torch.no_grad()
def evaluate_split(model: torch.nn.Module, dataset: Dataset, split: str, block_size: int, batch_size: int,
                   device="cpu", max_batches: int = 0) -> tuple[float, int]:  # fmt: skip
    """Mean loss in nats/token over ``split`` in consecutive windows of ``block_size``, and the tokens
    scored: the whole split, or its first ``max_batches`` batches of windows when that is > 0."""
    was_training = model.training
    model.eval()
    total = count = 0
    for i, (x, y) in enumerate(dataset.windows(split, block_size, batch_size)):
        if max_batches and i == max_batches:
            break
        total += lm_loss(model, x.to(device), y.to(device)).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / count, count


def train_step(model: torch.nn.Module, optimizer: HybridOptimizer, batch, grad_clip: float) -> float:
    """One update: batch -> model -> loss -> gradients -> clip -> step. Returns the loss."""
    x, y = batch
    model.train()
    logits = lm_logits(model, x)  # (B, T, V)
    optimizer.before_backward(logits)  # each part's verb; K-FAC fisher="mc": a backward with sampled labels
    loss = next_token_loss(logits, y)
    loss.backward()
    # The global gradient norm answers "is every gradient finite?" at no extra pass (max_norm inf: scale 1).
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if not (torch.isfinite(loss) and torch.isfinite(norm)):
        raise Diverged(divergence(loss, optimizer))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


class Diverged(InputError):
    """The loss or a gradient stopped being finite; the run folder keeps its last good checkpoint."""


def divergence(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> str:
    """What went non-finite, the loss or a gradient of which parameter group, and what to try."""
    fix = "lower the learning rates (optim.lr and the preconditioners' lr) or raise damping, then --resume"
    if not torch.isfinite(loss):
        return f"the training loss is {loss.item()}; {fix} from the last checkpoint"
    bad = [group.get("name", "?") for group in optimizer.param_groups
           if not all(torch.isfinite(p.grad).all() for p in group["params"] if p.grad is not None)]  # fmt: skip
    return f"a gradient of parameter group {', '.join(map(repr, bad))} is NaN or Inf; {fix} from the last checkpoint"


def train(
    cfg: Config, out: str | Path, resume: bool = False, progress: bool = True, on_step=None,
    tokenizer: str | Path | None = None,
) -> RunSummary:  # fmt: skip
    """Train ``cfg``'s model on its data and write the run folder ``out``.

    With ``resume``, training continues from ``out``'s checkpoint; ``cfg`` must be the run's
    saved config (``resume_config(out)``), where only ``train.steps`` may differ, to extend it.
    ``on_step(step)`` is called before each step's evaluation and update (``hybrid submit``
    labels its hardware jobs with it). ``tokenizer``: a ``tokenizer.json`` to use instead of
    training one (``hybrid tune`` trains one per study); a resumed run uses its own.

    Under torchrun (or in an initialized process group) this is one rank of data-parallel
    training (``hybrid.parallel``): ``train.batch_size`` is the global batch, each rank trains
    on its slice, and rank 0 alone writes ``out`` and evaluates; the other ranks return NaN losses.
    """
    out = Path(out)
    validate(cfg)  # every section, once, before a process group is joined or anything is built
    if cfg.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("train.device is cuda but no CUDA GPU is visible; use --device cpu")
    with process_group(cfg.train.device) as world:
        return _train(cfg, out, resume, progress and world.main, on_step, world, tokenizer)


def _train(cfg: Config, out: Path, resume: bool, progress: bool, on_step, world: World, tokenizer) -> RunSummary:
    if resume:
        # A run killed before its first checkpoint has only its config: it starts again from step 0.
        resume = on_main(world, lambda: _check_same_run(cfg, resume_config(out), out) or (out / CHECKPOINT).exists())
    check_world(cfg, world.size)
    on_main(world, lambda: make_run_folder(out))
    device = world.device

    # config -> data -> model -> optimizer
    torch.manual_seed(cfg.train.seed)
    if resume:
        _check_tokenizer_file(cfg, out)
    dataset = load_dataset(cfg.data, cfg.model.block_size, out / TOKENIZER if resume else tokenizer)
    if isinstance(dataset.tokenizer, BpeTokenizer):
        on_main(world, lambda: dataset.tokenizer.save(out / TOKENIZER))
    elif not resume:
        on_main(world, lambda: (out / TOKENIZER).unlink(missing_ok=True))
    if progress and dataset.floor is None:
        unigram, bigram = dataset.val_entropy
        tqdm.write(f"{cfg.data.source}: the validation text's character entropy is {unigram:.3f} bits/char "
                   f"(unigram), {bigram:.3f} (bigram, given the previous character)")  # fmt: skip
    model = HybridGPT(cfg.model, len(dataset.tokenizer), cfg.circuit, cfg.execution, validated=True).to(device)
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size  # the global batch
    for layer in model.modules():
        if isinstance(layer, QuantumLayer):
            layer.check_memory(tokens_per_step // world.size)
    optimizer = build_optimizer(model, cfg.optim, validated=True)  # inner model: K-FAC's hooks see each rank's slice
    net = wrap(model, world)  # what the training step calls: DDP averages the gradients over ranks
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg.optim, cfg.train.steps))
    batch_rng = torch.Generator().manual_seed(cfg.train.seed)  # draws global batches: the same on every rank
    eval_rng = torch.Generator().manual_seed(cfg.train.seed + 1)  # fixed evaluation batches
    eval_sets = {
        split: [_to(dataset.batch(split, cfg.train.batch_size, cfg.model.block_size, eval_rng), device)
                for _ in range(cfg.train.eval_batches)]
        for split in ("train", "val")
    } if world.main else {}  # fmt: skip

    with folder_lock(out) if world.main else nullcontext(), ExitStack() as closing:  # one process per run folder
        step, logged = 0, []
        if resume:
            state = on_main(world, lambda: _load_state(cfg, out))
            step, seconds_before = _restore(state, model, optimizer, scheduler, batch_rng, dataset)
            if world.main:  # rows logged after the checkpoint are replayed by this run: drop them
                logged = [r for r in read_table(out / METRICS) if r["step"] <= step]
                write_table(out / METRICS, logged)
                reset_tracking(out, keep_through=step)
        else:
            seconds_before = 0.0
            if world.main:
                (out / METRICS).unlink(missing_ok=True)
                reset_tracking(out)
        if world.main:
            save_config(cfg, out / CONFIG)

        start_step, start_time, losses = step, time.perf_counter(), []

        def seconds() -> float:  # wall-clock of the whole run, earlier sessions included
            return seconds_before + time.perf_counter() - start_time

        interval_start, interval_tokens = time.perf_counter(), 0
        bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", disable=not progress)
        log = closing.enter_context(MetricsLog(_sinks(cfg, out, bar, step if resume else None) if world.main else []))
        val_loss = train_loss = math.nan
        if resume and logged:  # a run resumed at its last step reports its last evaluation
            train_loss, val_loss = logged[-1]["train_loss"], logged[-1]["val_loss"]
        while True:
            if on_step is not None:
                on_step(step)
            every = cfg.train.curvature_every  # before the checkpoint: a checkpoint at a step implies its row
            if every and (step % every == 0 or step == cfg.train.steps) and (step > start_step or not resume):
                if world.main:  # rank 0 alone, on a fixed batch, its collectives off
                    damping = {"classical": cfg.optim.kfac.damping, "quantum": cfg.optim.qng.damping}
                    with local_only():
                        track(model, eval_sets["train"][0], out, step, optimizer, damping=damping,
                              splits=eval_sets)  # the train-validation gap beside the curvature
            # evaluate, log, checkpoint (a resumed run already did this at its start step)
            if (step % cfg.train.eval_every == 0 or step == cfg.train.steps) and (step > start_step or not resume):
                batch_loss = mean_over_ranks(sum(losses) / len(losses), world) if losses else math.nan
                if world.main:
                    if not all(torch.isfinite(p).all() for p in model.parameters()):  # never into a checkpoint
                        raise Diverged(f"step {step}: an update made parameters NaN or Inf; lower the learning "
                                       "rates or raise damping, then --resume from the last checkpoint")  # fmt: skip
                    train_loss, val_loss = evaluate(model, eval_sets["train"]), evaluate(model, eval_sets["val"])
                    interval = time.perf_counter() - interval_start
                    row = {
                        "step": step, "train_loss": train_loss, "val_loss": val_loss,
                        "val_bpc": dataset.bits_per_char("val", val_loss),
                        "floor_gap": val_loss - dataset.floor if dataset.floor is not None else math.nan,
                        "batch_loss": batch_loss, "lr": scheduler.get_last_lr()[0],
                        "tokens_per_s": interval_tokens / interval if interval_tokens else math.nan,
                        "seconds": seconds(),
                        **optimizer.stats(),  # what the preconditioners report, e.g. the metric's condition number
                    }  # fmt: skip
                    log.write(row)
                    _save(out / CHECKPOINT, step, seconds(), cfg, dataset, model, optimizer, scheduler, batch_rng,
                          world.size)  # fmt: skip
                losses, interval_start, interval_tokens = [], time.perf_counter(), 0
            if step >= cfg.train.steps:
                break
            batch = dataset.batch("train", cfg.train.batch_size, cfg.model.block_size, batch_rng)  # (B, T) global
            try:
                losses.append(train_step(net, optimizer, _to(shard(batch, world), device), cfg.optim.grad_clip))
            except Diverged as error:
                raise Diverged(f"step {step + 1}: {error}") from None
            scheduler.step()
            step += 1
            interval_tokens += tokens_per_step
            bar.update(1)
            tokens_per_s = interval_tokens / (time.perf_counter() - interval_start)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tokens_per_s:.0f}", refresh=False)
        bar.close()

        test_bpc = math.nan
        if world.main:
            test_bpc = _test(model, dataset, cfg, out, device)
            plot_loss_curve(out / METRICS, out / CURVE, dataset.floor)
            if cfg.train.sample_chars:
                text = sample_text(model, dataset.tokenizer, cfg.train.sample_chars, seed=cfg.train.seed)
                (out / SAMPLE).write_text(text, encoding="utf-8")
        return RunSummary(step, train_loss, val_loss, dataset.floor, seconds(), out, test_bpc)


def _test(model, dataset: Dataset, cfg: Config, out: Path, device) -> float:
    """Evaluate the test split once, write ``test.json``, return its bits per character."""
    loss, tokens = evaluate_split(model, dataset, "test", cfg.model.block_size, cfg.train.batch_size, device,
                                  cfg.train.test_batches)  # fmt: skip
    unigram, bigram = dataset.val_entropy
    summary = {
        "data": cfg.data.source, "tokenizer": cfg.data.tokenizer, "test_loss": loss,
        "test_bpc": dataset.bits_per_char("test", loss), "test_tokens": tokens,
        "tokens_per_char": dataset.tokens_per_char["test"],
        "val_unigram_bpc": unigram, "val_bigram_bpc": bigram,
        "floor_bpc": dataset.floor / math.log(2) if dataset.floor is not None else None,
    }  # fmt: skip
    atomic_write(out / TEST, lambda file: file.write(json.dumps(summary, indent=2).encode()))
    return summary["test_bpc"]


def _check_tokenizer_file(cfg: Config, out: Path) -> None:
    """On resume, the run folder's tokenizer file and ``data.tokenizer`` must agree."""
    present = (out / TOKENIZER).exists()
    if cfg.data.tokenizer == "bpe" and not present and (out / CHECKPOINT).exists():
        raise InputError(f"{out} has no {TOKENIZER} but its config says data.tokenizer=bpe; "
                         "restore the file or start a new run with --out")  # fmt: skip
    if cfg.data.tokenizer == "char" and present:
        raise InputError(f"{out} holds a {TOKENIZER} but its config says data.tokenizer=char; "
                         "resume with --set data.tokenizer=bpe or start a new run with --out")  # fmt: skip


def _sinks(cfg: Config, out: Path, bar, resume_step: int | None) -> list:
    """metrics.csv and the progress bar, then the trackers ``train.log`` names (closed with the loop)."""
    sinks, trackers = [CsvSink(out / METRICS), ProgressSink(bar)], sink_names(cfg.train.log)[1:]
    if trackers:
        from hybrid.tracking import tracking_sinks  # the optional extra "track"

        sinks += tracking_sinks(trackers, out, dict(_flat(cfg.to_dict())), resume_step)
    return sinks


def make_run_folder(out: Path) -> None:
    """Create the run folder ``out`` (and its parents), or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a run folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the run folder {out} ({error.strerror}); choose another --out") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"the run folder {out} is not writable; choose another --out")


def resume_config(out: str | Path) -> Config:
    """The saved config of run folder ``out``."""
    if not (Path(out) / CONFIG).is_file():
        raise InputError(f"{out} is not a run folder (it has no {CONFIG}); start a new run with --out")
    return load_config(Path(out) / CONFIG)


def _check_same_run(cfg: Config, saved: Config, out: Path) -> None:
    new, old = dict(_flat(cfg.to_dict())), dict(_flat(saved.to_dict()))
    changed = [key for key in old if key not in ("train.steps", "train.log") and new.get(key) != old[key]]
    if changed:
        raise InputError(
            f"resuming {out} with a changed config ({', '.join(changed)}); only --steps and --log may change on resume"
        )


def _flat(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        yield from _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]


def _to(batch, device):
    return tuple(t.to(device) for t in batch)


def _load_state(cfg: Config, out: Path) -> dict:
    state = load_checkpoint(out / CHECKPOINT)
    _check_same_run(cfg, config_from_dict(state["config"], source=str(out / CHECKPOINT)), out)
    return state


def _save(path, step, seconds, cfg, dataset, model, optimizer, scheduler, batch_rng, world_size=1) -> None:
    save_checkpoint(path, {
        "step": step, "seconds": seconds, "config": cfg.to_dict(), "vocab": dataset.tokenizer.vocab,
        "world_size": world_size,  # for the record: batches are global, so any world size resumes
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "batches": batch_rng.get_state()},
    })  # fmt: skip


def _restore(state, model, optimizer, scheduler, batch_rng, dataset: Dataset) -> tuple[int, float]:
    if state["vocab"] != dataset.tokenizer.vocab:
        if isinstance(dataset.tokenizer, BpeTokenizer):
            raise InputError(f"the run folder's {TOKENIZER} is not the tokenizer the checkpoint was trained with; "
                             "restore it or start a new run with --out")  # fmt: skip
        raise InputError(
            "the checkpoint was trained on other data (its vocabulary differs); resume with the same --data"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise InputError(
            f"the checkpoint does not match the run's config ({str(error).splitlines()[0][:100]}); "
            "resume without changing the model, circuit or optimizer"
        ) from None
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    batch_rng.set_state(state["rng"]["batches"])
    return int(state["step"]), float(state["seconds"])


def load_run(run: str | Path, device: str = "cpu") -> tuple[HybridGPT, CharTokenizer | BpeTokenizer, Config]:
    """The trained model, tokenizer and config of a run folder's checkpoint, in eval mode."""
    state = load_checkpoint(Path(run) / CHECKPOINT)
    cfg = config_from_dict(state["config"], source=str(Path(run) / CHECKPOINT))
    tokenizer = run_tokenizer(run, state["vocab"])
    model = HybridGPT(cfg.model, len(tokenizer), cfg.circuit, cfg.execution)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, cfg


def run_tokenizer(run: str | Path, vocab: str) -> CharTokenizer | BpeTokenizer:
    """The tokenizer a checkpoint's ``vocab`` names: its characters, or the run folder's BPE file."""
    if not vocab.startswith("bpe:"):
        return CharTokenizer(vocab)
    path = Path(run) / TOKENIZER
    if not path.is_file():
        raise InputError(f"{run} has no {TOKENIZER}, which its checkpoint was trained with; restore the file")
    tokenizer = BpeTokenizer.load(path)
    if tokenizer.vocab != vocab:
        raise InputError(f"{path} is not the tokenizer the checkpoint was trained with; restore the run's own file")
    return tokenizer


def sample_text(
    model, tokenizer: CharTokenizer | BpeTokenizer, n_chars: int, prompt: str = "", temperature: float = 1.0,
    seed: int = 0,
) -> str:  # fmt: skip
    """``prompt`` followed by ``n_chars`` sampled characters (a newline starts an empty prompt).

    A BPE model samples ``n_chars`` tokens (each at least one character) and the text is cut to length.
    """
    char_level = isinstance(tokenizer, CharTokenizer)
    start = prompt or ("\n" if not char_level or "\n" in tokenizer.ids else tokenizer.vocab[0])
    device = next(model.parameters()).device
    idx = tokenizer.encode(start)[None].to(device)  # (1, len(start))
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(idx, n_chars, temperature=temperature, generator=generator)
    model.train(was_training)
    text = tokenizer.decode(out[0].tolist())
    text = text if prompt else text[len(start) :]
    return text if char_level else text[: len(prompt) + n_chars]
