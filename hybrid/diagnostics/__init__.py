"""Curvature diagnostics: spectra of the quantum metric and of the K-FAC blocks, loss slices, plots.

    spectra.py  what is measured (``curvature_spectra``, ``track``, ``loss_slices``)
    plots.py    how it is drawn (``plot_spectra``, ``plot_tracking``, ``plot_slices``)
"""

from hybrid.diagnostics.spectra import RTOL as RTOL
from hybrid.diagnostics.spectra import SPECTRA as SPECTRA
from hybrid.diagnostics.spectra import TABLE as TABLE
from hybrid.diagnostics.spectra import LossSlices as LossSlices
from hybrid.diagnostics.spectra import Spectrum as Spectrum
from hybrid.diagnostics.spectra import curvature_spectra as curvature_spectra
from hybrid.diagnostics.spectra import kronecker_spectrum as kronecker_spectrum
from hybrid.diagnostics.spectra import load_spectra as load_spectra
from hybrid.diagnostics.spectra import loss_slices as loss_slices
from hybrid.diagnostics.spectra import metric_spectrum as metric_spectrum
from hybrid.diagnostics.spectra import reset_tracking as reset_tracking
from hybrid.diagnostics.spectra import save_spectra as save_spectra
from hybrid.diagnostics.spectra import summarize as summarize
from hybrid.diagnostics.spectra import track as track
