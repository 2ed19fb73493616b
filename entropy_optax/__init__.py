"""entropy_optax: Entropy-SGD (Chaudhari et al., ICLR 2017) as an optax transform.

Three layers, visible from the imports (every public name, one line each:
``docs/api.md``):

* ``entropy_optax``, the optimizers and their helpers (jax and optax only):
  :func:`entropy_sgd`, :func:`entropy_adam`, :func:`local_entropy` (around any
  outer optax transform), :func:`scoping`, the state :class:`EntropySGDState`
  with :func:`find_state` (it inside any wrapper), :func:`anchor_params` (its
  anchor, the weights to evaluate) and :func:`replace_carry` (its carry slot
  seeded); :func:`make_train_step`; Parle: :func:`parle`, :class:`ParleState`,
  :func:`reference_params`, :func:`replicate`.
* :mod:`entropy_optax.flax`: the Flax NNX and Linen integrations (the only
  module that imports flax).
* :mod:`entropy_optax.recipes`: named hyperparameter recipes (the authors'
  Lua and PyTorch code, Pittorino et al.'s).
* Research tools: :mod:`entropy_optax.diagnostics` (Hessian spectra, local
  entropy and local energy) and :mod:`entropy_optax.langevin` (the raw
  Langevin step).
"""

from entropy_optax import diagnostics
from entropy_optax import langevin
from entropy_optax import recipes
from entropy_optax._src.alias import entropy_adam
from entropy_optax._src.alias import entropy_sgd
from entropy_optax._src.parle import ParleState
from entropy_optax._src.parle import parle
from entropy_optax._src.parle import reference_params
from entropy_optax._src.parle import replicate
from entropy_optax._src.schedules import scoping
from entropy_optax._src.state import EntropySGDState
from entropy_optax._src.state import anchor_params
from entropy_optax._src.state import find_state
from entropy_optax._src.state import replace_carry
from entropy_optax._src.train_step import make_train_step
from entropy_optax._src.transform import local_entropy

__version__ = "0.2.0.dev0"

__all__ = (
    # The submodules, imported here so that `entropy_optax.diagnostics` and the others work.
    "diagnostics",
    "langevin",
    "recipes",
    "EntropySGDState",
    "ParleState",
    "anchor_params",
    "entropy_adam",
    "entropy_sgd",
    "find_state",
    "local_entropy",
    "make_train_step",
    "parle",
    "reference_params",
    "replace_carry",
    "replicate",
    "scoping",
)
