"""What K-FAC and eigen-Adam see of a step: each linear layer's inputs x and output gradients g.

    capture = LinearCapture(layers, fisher="empirical", approx="expand", due=lambda: step % 10 == 0)
    logits = model(x)                       # forward hooks keep x, tensor hooks on the outputs keep g
    capture.sampled_backward(logits, params)    # fisher="mc": the g of labels drawn from the model
    loss.backward()
    factors = capture.batch_factors()       # {layer: (A, G)} of this step, averaged over ranks; clears

Hooks are the only hidden control flow: registered in one place (``__init__``), removable,
storing raw tensors, returning at once on steps ``due()`` says are not curvature steps; all math
happens in ``batch_factors`` (``hybrid.optim.kfac_blocks.batch_factors`` per layer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.optim.kfac_blocks import batch_factors
from hybrid.optim.linear_layers import layer_dims
from hybrid.optim.reduce import rank_and_size, row_offset, weighted_mean


class LinearCapture:
    r"""Forward and backward hooks on ``layers`` that keep, on curvature steps, each layer's
    input x (..., d_in) and the gradient g (..., d_out) of the loss w.r.t. its output.

    Args:
        layers: ``{name: nn.Linear or Conv1D}`` (``hybrid.optim.linear_layers.kfac_layers``).
        fisher: ``"empirical"`` (g of the training backward) or ``"mc"`` (g of
            ``sampled_backward`` only).
        approx: ``"expand"`` or ``"reduce"``, see ``batch_factors``.
        due: whether the step now running is a curvature step (read in the hooks).
        seed: seeds the label sampling of ``fisher="mc"`` (a CPU generator: the same labels on any device).
    """

    def __init__(self, layers: dict[str, nn.Module], fisher: str, approx: str, due: Callable[[], bool], seed: int = 0):
        self.layers, self.fisher, self.approx, self.due = layers, fisher, approx, due
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.grads: dict[str, dict[int, torch.Tensor]] = {name: {} for name in layers}  # forward index -> grad
        self._sampling = False
        self._handles = [
            layer.register_forward_hook(partial(self._save_input, name), with_kwargs=True)
            for name, layer in layers.items()
        ]

    def _save_input(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        if not (self.due() and torch.is_grad_enabled() and output.requires_grad):
            return  # off curvature steps, evaluation and generation: one check and out
        self.inputs[name].append((args[0] if args else kwargs["input"]).detach())
        # A tensor hook on the output, not a module backward hook: it still sees the right
        # gradient when an in-place activation modifies the output afterwards, and it pairs the
        # gradient with its own forward: a forward that is never backpropagated (a loss printed
        # with grad enabled) has no gradient and is left out of the factors.
        output.register_hook(partial(self._save_grad, name, len(self.inputs[name]) - 1))

    def _save_grad(self, name: str, index: int, grad: torch.Tensor) -> None:
        if self._sampling == (self.fisher == "mc"):  # mc: only the sampled backward; empirical: only the real one
            grads = self.grads[name]
            grads[index] = grads[index] + grad.detach() if index in grads else grad.detach()

    @contextmanager
    def kept(self) -> Iterator[None]:
        """On exit, the hooks hold again what they held on entry."""
        saved = [(held, {name: copy.copy(v) for name, v in held.items()}) for held in (self.inputs, self.grads)]
        try:
            yield
        finally:
            for held, before in saved:
                held.update(before)

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget this step's captures."""
        for captured in (*self.inputs.values(), *self.grads.values()):
            captured.clear()

    def sampled_backward(self, logits: torch.Tensor, params: list[nn.Parameter]) -> None:
        """With ``fisher="mc"`` on a curvature step: backpropagate the mean cross-entropy of
        labels drawn from ``softmax(logits)`` (the true Fisher in expectation) to ``params``, so
        that the hooks see those output gradients. Leaves ``.grad`` alone; a no-op otherwise.

        Args:
            logits: (..., V) the model's output with its graph; the training loss must be the
                mean cross-entropy over the same positions.
            params: the parameters the layers own (the backward stops there).
        """
        if self.fisher != "mc" or not self.due() or not logits.requires_grad:
            return
        flat = logits.reshape(-1, logits.shape[-1])  # (M, V)
        cdf = F.softmax(flat.detach().double(), dim=-1).cumsum(-1)  # (M, V)
        # Data parallel: every rank draws all ranks' uniforms and keeps its rows, as one process would.
        start, total = row_offset(flat.shape[0], flat.device)
        u = torch.rand(total, 1, generator=self.generator, dtype=torch.float64)[start : start + flat.shape[0]]
        u = u.to(flat.device)  # (M, 1)
        labels = torch.searchsorted(cdf, u, right=True).clamp_(max=flat.shape[-1] - 1).squeeze(1)  # (M,)
        self._sampling = True
        try:
            torch.autograd.grad(F.cross_entropy(flat, labels), params, retain_graph=True, allow_unused=True)
        finally:
            self._sampling = False

    def batch_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """This step's A and G per layer, averaged over the ranks of data-parallel training; clears the captures.

        Rank r's factors average its own M_r rows, and its g are of its own mean loss, so
        ``M_r g`` is the per-token gradient, as in one process: A and G over the global batch
        are the ranks' weighted by their rows (M_r for G, A's rows for A), one all-reduce.

        Raises:
            RuntimeError: a layer has a gradient but no captured forward (its weight is used
                outside its forward), or forwards but no backward through them.
        """
        factors, counts = {}, {}
        for name, layer in self.layers.items():
            x, g = self.inputs[name], self.grads[name]
            if not x and layer.weight.grad is not None:
                raise RuntimeError(
                    f"K-FAC saw no forward pass of {name!r} but it has a gradient: its weight is used "
                    "outside its forward(); exclude it from K-FAC"
                )
            if not g and layer.weight.grad is None:
                continue  # the layer did not take part in this step's loss
            if not g:
                hint = "; with fisher='mc', call sampled_backward(logits) before loss.backward()"
                hint *= self.fisher == "mc"
                raise RuntimeError(f"K-FAC saw {len(x)} forward passes of {name!r} but no backward through them{hint}")
            paired = sorted(g)  # forwards that were backpropagated
            factors[name] = batch_factors([x[i] for i in paired], [g[i] for i in paired], self.approx,
                                          layer.bias is not None)  # fmt: skip
            tokens = [x[i].shape[:-1].numel() for i in paired]  # G's rows; A's unless reduce sums over positions
            rows = [t if self.approx == "expand" or x[i].dim() == 2 else x[i].shape[0]
                    for t, i in zip(tokens, paired, strict=True)]  # fmt: skip
            counts[name] = (sum(rows), sum(tokens))
        self.clear()
        if rank_and_size()[1] == 1:
            return factors
        for name, layer in self.layers.items():  # a layer without this step's data here still takes part
            if name not in factors:
                d_out, d_in = layer_dims(layer)
                d_a = d_in + (layer.bias is not None)
                w = layer.weight
                factors[name] = (w.new_zeros(d_a, d_a), w.new_zeros(d_out, d_out))
                counts[name] = (0, 0)
        return weighted_mean({n: factors[n] for n in self.layers}, counts)


def fold_factors(
    A: dict[str, torch.Tensor], G: dict[str, torch.Tensor], batch: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ema: float,
) -> int:  # fmt: skip
    """Fold a step's factors into the running averages ``A`` and ``G`` in place:
    ``A <- ema A + (1 - ema) A_batch`` (the first update takes the batch's as they are), likewise G.
    A layer whose batch factors are not finite is skipped (a bad batch must not poison the
    averages). Returns the number skipped."""
    skipped = 0
    for name, (A_batch, G_batch) in batch.items():
        if not (torch.isfinite(A_batch).all() and torch.isfinite(G_batch).all()):
            skipped += 1
            continue
        if name in A:
            A[name].lerp_(A_batch, 1 - ema)
            G[name].lerp_(G_batch, 1 - ema)
        else:
            A[name], G[name] = A_batch, G_batch
    return skipped
