"""entropy_optax: Entropy-SGD (Chaudhari et al., ICLR 2017) as an optax transform.

The public API:

* :func:`entropy_sgd`, :func:`entropy_adam`: the optimizers.
* :func:`local_entropy`: Entropy-SGD around any outer optax transform.
* :func:`scoping`: the scope schedule gamma0 (1 + gamma1)^t.
* :func:`anchor_params`, :func:`find_state`, :func:`fused_carry`,
  :func:`replace_carry`: read the state, seed its carry slot.
* :func:`langevin_step`: the pure Langevin step both modes call.
* :mod:`entropy_optax.diagnostics`: Hessian spectra, local entropy, local energy.
* :func:`parle`, :func:`replicate`, :func:`reference_params`: Parle, replicated
  Entropy-SGD coupled to a reference (replicas along a leading axis).
* :func:`hlo_collectives`: the collectives of a compiled (sharded) step.
* :func:`make_train_step`: a jitted step over one outer step's minibatches.
* Flax: :func:`nnx_fused_update`, :func:`nnx_grad_fn`, :func:`nnx_at_anchor`,
  :func:`linen_fused_apply_gradients`, :func:`linen_at_anchor` (flax is
  imported only when they run).
* Modules :mod:`entropy_optax.data`, :mod:`entropy_optax.models` (needs flax)
  and :mod:`entropy_optax.demo` (``python -m entropy_optax.demo``).
"""

from entropy_optax import diagnostics
from entropy_optax._src.alias import entropy_adam
from entropy_optax._src.alias import entropy_sgd
from entropy_optax._src.collectives import Collective
from entropy_optax._src.collectives import hlo_collectives
from entropy_optax._src.flax_integration import linen_at_anchor
from entropy_optax._src.flax_integration import linen_fused_apply_gradients
from entropy_optax._src.flax_integration import nnx_at_anchor
from entropy_optax._src.flax_integration import nnx_fused_update
from entropy_optax._src.flax_integration import nnx_grad_fn
from entropy_optax._src.langevin import LangevinHyperparams
from entropy_optax._src.langevin import langevin_step
from entropy_optax._src.parle import ParleState
from entropy_optax._src.parle import parle
from entropy_optax._src.parle import reference_params
from entropy_optax._src.parle import replicate
from entropy_optax._src.schedules import scoping
from entropy_optax._src.state_utils import anchor_params
from entropy_optax._src.state_utils import find_state
from entropy_optax._src.state_utils import fused_carry
from entropy_optax._src.state_utils import replace_carry
from entropy_optax._src.train_step import make_train_step
from entropy_optax._src.transform import EntropySGDState
from entropy_optax._src.transform import local_entropy

__version__ = "0.1.0"

__all__ = (
    "Collective",
    "EntropySGDState",
    "LangevinHyperparams",
    "ParleState",
    "anchor_params",
    "entropy_adam",
    "entropy_sgd",
    "find_state",
    "fused_carry",
    "hlo_collectives",
    "langevin_step",
    "linen_at_anchor",
    "linen_fused_apply_gradients",
    "local_entropy",
    "make_train_step",
    "nnx_at_anchor",
    "nnx_fused_update",
    "nnx_grad_fn",
    "parle",
    "reference_params",
    "replace_carry",
    "replicate",
    "scoping",
)
