"""Flax integrations of Entropy-SGD: NNX and Linen.

The only part of ``entropy_optax`` that imports flax.

* :func:`nnx_fused_update`: one fused outer step of an ``nnx.Module``, its
  BatchNorm statistics and dropout state threaded through the inner loop.
* :func:`nnx_grad_fn`: the fused-mode ``grad_fn`` of a stateless NNX model.
* :func:`nnx_at_anchor`: evaluate an NNX model at the anchor.
* :func:`linen_fused_apply_gradients`: ``TrainState.apply_gradients`` for
  fused mode.
* :func:`linen_at_anchor`: a Linen ``TrainState`` at the anchor.
"""

from entropy_optax._src.flax_integration import linen_at_anchor
from entropy_optax._src.flax_integration import linen_fused_apply_gradients
from entropy_optax._src.flax_integration import nnx_at_anchor
from entropy_optax._src.flax_integration import nnx_fused_update
from entropy_optax._src.flax_integration import nnx_grad_fn

__all__ = (
    "linen_at_anchor",
    "linen_fused_apply_gradients",
    "nnx_at_anchor",
    "nnx_fused_update",
    "nnx_grad_fn",
)
