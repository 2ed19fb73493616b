"""Named recipes: Entropy-SGD as the authors ran it, and as later work did.

* :func:`lua`: the authors' Lua code, the paper's MNIST and CIFAR-10 runs.
* :func:`pytorch`: the authors' PyTorch port (outer Nesterov momentum).
* :func:`bocconi`: Pittorino et al. (ICLR 2021): gamma-scaled outer step,
  gamma grown over the whole run, momentum in both loops, L = 5.
"""

from entropy_optax._src.recipes import bocconi
from entropy_optax._src.recipes import bocconi_gamma
from entropy_optax._src.recipes import lua
from entropy_optax._src.recipes import pytorch

__all__ = ("bocconi", "bocconi_gamma", "lua", "pytorch")
