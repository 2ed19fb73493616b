"""One Langevin (inner) step of Entropy-SGD, as a pure function of pytrees.

Both modes of the transform, step-interleaved and fused, call
:func:`langevin_step`; nothing else moves the walker.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from entropy_optax._src import noise as noise_lib


class LangevinHyperparams(NamedTuple):
  """The settings of one Langevin step.

  The first six fields are numbers: each a Python float or a scalar array,
  which may be traced (a schedule's value, an injected hyperparameter). The
  last three are static Python values that choose the program: changing
  them under ``jit`` recompiles, and they cannot be traced.
  """

  gamma: Any
  """The scope gamma (traced or not)."""
  langevin_lr: Any
  """eta', the step size (traced or not)."""
  noise: Any
  """eps, the thermal noise (traced or not)."""
  mu_decay: Any
  """alpha, the weight of the old mean (traced or not)."""
  weight_decay: Any
  """wd (traced or not)."""
  inner_momentum: Any
  """beta (traced or not); unused when the momentum buffer is None."""
  nesterov: bool
  """(static) the Nesterov form of the momentum."""
  draw_noise: bool
  """(static) False skips the draws (noise is the constant 0)."""
  noise_generator: noise_lib.NoiseGenerator = "hash"
  """(static) the generator of the N(0, 1) draws."""


class LangevinResult(NamedTuple):
  delta: Any
  """The walker's displacement; ``walker + delta`` is the new walker."""
  walker: Any
  mu: Any
  momentum: Any


def langevin_step(
    grads: Any,
    walker: Any,
    anchor: Any,
    mu: Any,
    momentum: Optional[Any],
    key: jax.Array,
    hp: LangevinHyperparams,
) -> LangevinResult:
  r"""One SGLD step of the walker x' towards the local Gibbs measure around x.

  .. math::

    m &\leftarrow \beta m + g, \qquad
        g \leftarrow g + \beta m \ \text{(Nesterov)} \ \text{or}\ m, \\
    d &\leftarrow g - \gamma (x - x') + \mathrm{wd}\, x'
        + \frac{\epsilon}{\sqrt{\eta'/2}}\, \xi, \qquad \xi \sim N(0, I), \\
    x' &\leftarrow x' - \eta' d, \qquad
    \mu \leftarrow \alpha \mu + (1 - \alpha) x'.

  Args:
    grads: gradient of the loss at ``walker`` on one minibatch.
    walker: the walker x'.
    anchor: the anchor x.
    mu: the running mean of the walker.
    momentum: the momentum buffer m, or None when the inner momentum is 0.
    key: typed PRNG key of this step's noise.
    hp: the step's scalars; noise is drawn only when ``hp.draw_noise``.

  Returns:
    The displacement, the new walker (``walker + delta`` in the walker's
    dtype, exactly what ``optax.apply_updates`` computes), the new mean and the
    new momentum buffer (None if ``momentum`` is None).

  Examples:
    One noiseless step from the anchor with gradient 1: x' moves by -eta'.

    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import langevin
    >>> hp = langevin.LangevinHyperparams(
    ...     gamma=0.1, langevin_lr=0.5, noise=0.0, mu_decay=0.75, weight_decay=0.0,
    ...     inner_momentum=0.0, nesterov=True, draw_noise=False)
    >>> x = jnp.zeros(2)
    >>> step = langevin.langevin_step(jnp.ones(2), x, x, x, None, jax.random.key(0), hp)
    >>> step.walker, step.mu
    (Array([-0.5, -0.5], dtype=float32), Array([-0.125, -0.125], dtype=float32))
  """
  if not all(isinstance(v, (bool, np.bool_)) for v in (hp.nesterov, hp.draw_noise)):
    raise TypeError(
        "LangevinHyperparams.nesterov and .draw_noise must be Python bools (static "
        f"settings), got {type(hp.nesterov).__name__} and {type(hp.draw_noise).__name__}."
    )
  xi = (
      noise_lib.standard_normal_like(key, walker, hp.noise_generator)
      if hp.draw_noise
      else None
  )

  def leaf_step(g, w, x, mean, m, z):
    dtype = w.dtype
    cast = lambda s: jnp.asarray(s, dtype)
    g = g.astype(dtype)
    if m is not None:
      m = cast(hp.inner_momentum) * m + g
      g = g + cast(hp.inner_momentum) * m if hp.nesterov else m
    d = g - cast(hp.gamma) * (x - w)
    d = d + cast(hp.weight_decay) * w
    lr = cast(hp.langevin_lr)
    delta = -lr * d
    if z is not None:
      # -eta' (eps / sqrt(eta' / 2)) z, written so that eta' = 0 moves nothing.
      delta = delta - cast(hp.noise) * jnp.sqrt(cast(2.0) * lr) * z
    new_w = (w + delta).astype(dtype)
    alpha = cast(hp.mu_decay)
    new_mean = alpha * mean + (cast(1.0) - alpha) * new_w
    return delta, new_w, new_mean, m

  leaves_w, treedef = jax.tree.flatten(walker)
  flat = lambda tree: treedef.flatten_up_to(tree)  # type: ignore[attr-defined]
  none_leaves = [None] * len(leaves_w)
  results = [
      leaf_step(*args)
      for args in zip(
          flat(grads),
          leaves_w,
          flat(anchor),
          flat(mu),
          none_leaves if momentum is None else flat(momentum),
          none_leaves if xi is None else flat(xi),
          strict=True,
      )
  ]
  unflatten = lambda i: jax.tree.unflatten(treedef, [r[i] for r in results])
  return LangevinResult(
      delta=unflatten(0),
      walker=unflatten(1),
      mu=unflatten(2),
      momentum=None if momentum is None else unflatten(3),
  )
