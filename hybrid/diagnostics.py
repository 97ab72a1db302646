"""Curvature diagnostics: the spectra of the quantum metric and of the K-FAC blocks, side by side.

    spectra = curvature_spectra(model, batch)            # [Spectrum], one per block
    summarize(spectra, damping)                          # {name/stat: value}: condition, eff. dim, ...
    plot_spectra(spectra)                                # the paper's central comparison, as a figure
    track(model, batch, run_dir, step)                   # append to run_dir/diagnostics.csv + spectra.pt
    slices = loss_slices(model, batch, optimizer)        # loss along -gradient and -natural gradient

Conventions (the numbers a plot shows):
- quantum blocks: eigenvalues of the Fubini-Study metric of each ``QuantumLayer``'s weights,
  PennyLane's convention (``hybrid.metric_tensor``, full metric, averaged over the circuit
  inputs of the batch); the quantum Fisher information is 4x this.
- classical blocks: eigenvalues of each K-FAC block ``A (x) G`` in ``hybrid.kfac``'s
  normalization. The spectrum of a Kronecker product is every product of an eigenvalue of A
  with one of G, so no (d_in d_out)^2 matrix is ever formed.
- condition number: largest eigenvalue over the smallest one above ``RTOL`` times the largest
  (the numerically nonzero part); ``rank`` counts those eigenvalues.
- effective dimension: sum_i lambda_i / (lambda_i + damping), the number of directions the
  curvature resolves above the damping (MacKay 1992); participation ratio:
  (sum_i lambda_i)^2 / sum_i lambda_i^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RTOL = 1e-10  # eigenvalues below RTOL * largest count as zero


@dataclass
class Spectrum:
    """The eigenvalues of one curvature block, descending, float64."""

    name: str  # module name in the model
    kind: str  # "quantum" (Fubini-Study metric) or "classical" (K-FAC block)
    eigenvalues: torch.Tensor  # (P,)

    def summary(self, damping: float) -> dict[str, float]:
        """Largest eigenvalue, rank, condition number, effective dimension, participation ratio."""
        lam = self.eigenvalues.clamp_min(0)
        top = float(lam[0]) if lam.numel() else 0.0
        nonzero = lam[lam > RTOL * top] if top > 0 else lam[:0]
        return {
            "max": top,
            "rank": float(nonzero.numel()),
            "condition": top / float(nonzero[-1]) if nonzero.numel() else float("nan"),
            "effective_dim": float((lam / (lam + damping)).sum()),
            "participation": float(lam.sum() ** 2 / (lam**2).sum()) if top > 0 else 0.0,
        }


def kronecker_spectrum(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of ``A (x) G`` (A: (a, a), G: (g, g) symmetric PSD), descending: (a * g,)."""
    a = torch.linalg.eigvalsh(A.double()).clamp_min(0)
    g = torch.linalg.eigvalsh(G.double()).clamp_min(0)
    return torch.sort(torch.outer(a, g).reshape(-1), descending=True).values


def metric_spectrum(metric: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric metric (P, P), descending: (P,)."""
    return torch.sort(torch.linalg.eigvalsh(metric.double()).clamp_min(0), descending=True).values


def summarize(spectra: list[Spectrum], damping: float) -> dict[str, float]:
    """``{"<name>/<stat>": value}`` for every block and statistic of ``Spectrum.summary``."""
    return {f"{s.name}/{k}": v for s in spectra for k, v in s.summary(damping).items()}
