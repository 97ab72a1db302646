"""Curvature-aware optimizers for hybrid models: preconditioners that own disjoint parameters,
composed into one optimizer whose updates are stock torch steps.

    metric.py         the Fubini-Study metric tensor of a QuantumLayer's weights
    qng.py            quantum natural gradient (QNGPreconditioner, QNG)
    kfac_blocks.py    one nn.Linear's Kronecker factors, decompositions and damped inverse
    kfac.py           K-FAC over a model's linear layers (KFACPreconditioner, KFAC)
    optimizer.py      HybridOptimizer: the preconditioners, then the stock steps
"""

from hybrid.optim.kfac import KFAC as KFAC
from hybrid.optim.kfac import KFACPreconditioner as KFACPreconditioner
from hybrid.optim.metric import metric_tensor as metric_tensor
from hybrid.optim.optimizer import OPTIMIZERS as OPTIMIZERS
from hybrid.optim.optimizer import HybridOptimizer as HybridOptimizer
from hybrid.optim.optimizer import Preconditioner as Preconditioner
from hybrid.optim.optimizer import build_optimizer as build_optimizer
from hybrid.optim.optimizer import lr_factor as lr_factor
from hybrid.optim.optimizer import parameter_groups as parameter_groups
from hybrid.optim.optimizer import trainable_parameters as trainable_parameters
from hybrid.optim.qng import QNG as QNG
from hybrid.optim.qng import QNGPreconditioner as QNGPreconditioner
