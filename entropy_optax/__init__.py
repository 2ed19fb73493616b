"""entropy_optax: Entropy-SGD (Chaudhari et al., ICLR 2017) as an optax transform.

The public API:

* :func:`entropy_sgd`, :func:`entropy_adam`: the optimizers.
* :func:`local_entropy`: Entropy-SGD around any outer optax transform.
* :func:`scoping`: the scope schedule gamma0 (1 + gamma1)^t.
* :func:`anchor_params`, :func:`fused_carry`: read the state.
* :func:`langevin_step`: the pure Langevin step both modes call.
"""

from entropy_optax._src.alias import entropy_adam
from entropy_optax._src.alias import entropy_sgd
from entropy_optax._src.langevin import LangevinHyperparams
from entropy_optax._src.langevin import langevin_step
from entropy_optax._src.schedules import scoping
from entropy_optax._src.state_utils import anchor_params
from entropy_optax._src.state_utils import find_state
from entropy_optax._src.state_utils import fused_carry
from entropy_optax._src.transform import EntropySGDState
from entropy_optax._src.transform import local_entropy

__version__ = "0.1.0"

__all__ = (
    "EntropySGDState",
    "LangevinHyperparams",
    "anchor_params",
    "entropy_adam",
    "entropy_sgd",
    "find_state",
    "fused_carry",
    "langevin_step",
    "local_entropy",
    "scoping",
)
