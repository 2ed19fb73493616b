"""The raw Langevin step of Entropy-SGD, for research use.

Both modes of :func:`entropy_optax.local_entropy` move the walker with
:func:`langevin_step`; the flatness diagnostics sample with it too. Training
code never needs it: use the optimizers.
"""

from entropy_optax._src.langevin import LangevinHyperparams
from entropy_optax._src.langevin import LangevinResult
from entropy_optax._src.langevin import langevin_step

__all__ = ("LangevinHyperparams", "LangevinResult", "langevin_step")
