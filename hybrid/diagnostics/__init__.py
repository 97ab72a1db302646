"""Curvature diagnostics: spectra of the quantum metric, the K-FAC blocks and AdamW's second
moment, the directions of an update, tracking along training, plots.

    spectra.py  what is measured at one moment (``curvature_spectra``, ``summarize``, ``Spectrum``)
    slices.py   directions of an update (``loss_slices``, ``step_cosines``)
    record.py   curvature along training (``track``, ``load_spectra``, ``reset_tracking``)
    plots.py    how it is drawn (``plot_spectra``, ``plot_tracking``, ``plot_slices``)
"""

from hybrid.diagnostics.record import SPECTRA as SPECTRA
from hybrid.diagnostics.record import TABLE as TABLE
from hybrid.diagnostics.record import load_spectra as load_spectra
from hybrid.diagnostics.record import reset_tracking as reset_tracking
from hybrid.diagnostics.record import save_spectra as save_spectra
from hybrid.diagnostics.record import track as track
from hybrid.diagnostics.slices import LossSlices as LossSlices
from hybrid.diagnostics.slices import loss_slices as loss_slices
from hybrid.diagnostics.slices import step_cosines as step_cosines
from hybrid.diagnostics.spectra import KINDS as KINDS
from hybrid.diagnostics.spectra import RTOL as RTOL
from hybrid.diagnostics.spectra import TOP_K as TOP_K
from hybrid.diagnostics.spectra import Spectrum as Spectrum
from hybrid.diagnostics.spectra import adamw_spectrum as adamw_spectrum
from hybrid.diagnostics.spectra import curvature_spectra as curvature_spectra
from hybrid.diagnostics.spectra import kronecker_spectrum as kronecker_spectrum
from hybrid.diagnostics.spectra import metric_spectrum as metric_spectrum
from hybrid.diagnostics.spectra import summarize as summarize
