"""Curvature-aware optimizers for hybrid models: preconditioners that own disjoint parameters,
composed into one optimizer whose updates are stock torch steps.

    metric.py         the Fubini-Study metric tensor of a QuantumLayer's weights
    qng.py            quantum natural gradient (QNGPreconditioner, QNG)
    metric_adam.py    Adam in the metric's eigenbasis (MetricAdamPreconditioner, MetricAdam)
    kfac_blocks.py    one linear layer's Kronecker factors; the eigh and Cholesky block types
    kfac_capture.py   the hooks that keep each linear layer's x and g (K-FAC's and eigen-Adam's)
    linear_layers.py  which layers K-FAC takes (nn.Linear, Conv1D) and why it leaves the rest
    kfac.py           K-FAC over a model's linear layers (KFACPreconditioner, KFAC)
    eigen_adam.py     Adam in K-FAC's eigenbasis (EigenAdamPreconditioner, EigenAdamKFAC)
    muon.py           torch.optim.Muon on the hidden matrices: a stock optimizer's part
    optimizer.py      Part and HybridOptimizer: preconditioners, then each part's stock step
    preconditioned.py KFAC and QNG alone: HybridOptimizer with one part
    registry.py       which part owns which parameters: rows, presets, OptimConfig, build_optimizer
"""

from hybrid.optim.eigen_adam import EigenAdamKFAC as EigenAdamKFAC
from hybrid.optim.kfac import KFAC as KFAC
from hybrid.optim.kfac import KFACPreconditioner as KFACPreconditioner
from hybrid.optim.kfac import KFACSettings as KFACSettings
from hybrid.optim.metric import metric_tensor as metric_tensor
from hybrid.optim.metric_adam import MetricAdam as MetricAdam
from hybrid.optim.optimizer import HybridOptimizer as HybridOptimizer
from hybrid.optim.optimizer import Part as Part
from hybrid.optim.optimizer import Preconditioner as Preconditioner
from hybrid.optim.optimizer import parameter_groups as parameter_groups
from hybrid.optim.optimizer import trainable_parameters as trainable_parameters
from hybrid.optim.qng import QNG as QNG
from hybrid.optim.qng import QNGPreconditioner as QNGPreconditioner
from hybrid.optim.qng import QNGSettings as QNGSettings
from hybrid.optim.registry import OPTIMIZERS as OPTIMIZERS
from hybrid.optim.registry import PRESETS as PRESETS
from hybrid.optim.registry import ROWS as ROWS
from hybrid.optim.registry import OptimConfig as OptimConfig
from hybrid.optim.registry import build_optimizer as build_optimizer
from hybrid.optim.registry import lr_factor as lr_factor
from hybrid.optim.registry import search_space as search_space
