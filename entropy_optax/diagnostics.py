"""Flatness diagnostics for the minima an optimizer finds.

Matrix-free and pytree-generic: every function takes ``loss_fn(params,
batch)``, the params, and the data as ``batches``, a pytree whose leaves share
a leading axis of minibatches, visited one at a time so memory stays that of
one minibatch. All of them run under ``jax.jit`` (with the loss and the static
sizes closed over).

* :func:`hessian_eigenpairs`: top (or bottom) k eigenpairs, Lanczos.
* :func:`hessian_trace`: Hutchinson's trace with its standard error.
* :func:`hessian_spectral_density`: stochastic Lanczos quadrature.
* :func:`hvp_fn`: the Hessian-vector product itself.
* :func:`local_entropy_estimate`: F(x; gamma) and <x'> with the optimizer's
  Langevin step (not to be confused with the optimizer
  :func:`entropy_optax.local_entropy`).
* :func:`local_energy`: the metric under multiplicative weight noise.

References:
  Ghorbani, Krishnan, Xiao, `An Investigation into Neural Net Optimization via
  Hessian Eigenvalue Density <https://arxiv.org/abs/1901.10159>`_, ICML 2019.

  Pittorino et al., `Entropic gradient descent algorithms and wide flat minima
  <https://arxiv.org/abs/2006.07897>`_, ICLR 2021.
"""

from entropy_optax._src.diagnostics.flatness import LocalEnergy
from entropy_optax._src.diagnostics.flatness import LocalEntropyEstimate
from entropy_optax._src.diagnostics.flatness import local_energy
from entropy_optax._src.diagnostics.flatness import local_entropy_estimate
from entropy_optax._src.diagnostics.hvp import hvp_fn
from entropy_optax._src.diagnostics.spectrum import Eigenpairs
from entropy_optax._src.diagnostics.spectrum import SpectralDensity
from entropy_optax._src.diagnostics.spectrum import TraceEstimate
from entropy_optax._src.diagnostics.spectrum import hessian_eigenpairs
from entropy_optax._src.diagnostics.spectrum import hessian_spectral_density
from entropy_optax._src.diagnostics.spectrum import hessian_trace

__all__ = (
    "Eigenpairs",
    "LocalEnergy",
    "LocalEntropyEstimate",
    "SpectralDensity",
    "TraceEstimate",
    "hessian_eigenpairs",
    "hessian_spectral_density",
    "hessian_trace",
    "hvp_fn",
    "local_energy",
    "local_entropy_estimate",
)
