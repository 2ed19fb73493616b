"""Run-time checks: values that only a running step knows.

:func:`refuse_unless` raises at once outside ``jit`` and, inside it, from a
host callback when the step runs; the checks of the anchor and of the inner
count go through it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def refuse_unless(ok: Any, message: Callable[..., str], *values: Any) -> None:
  """Raises ``ValueError(message(*values))`` unless ``ok`` holds everywhere.

  Outside ``jit`` it raises here. Traced, the check runs with the step: a
  host callback, taken only when ``ok`` fails, raises, and the error reaches
  the caller of the jitted step (as a ``JaxRuntimeError`` that carries the
  message) instead of its results. Under ``vmap`` the callback sees every
  replica's ``ok`` and raises if any fails.
  """
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((ok, values))):
    if not np.all(np.asarray(ok)):
      raise ValueError(message(*values))
    return

  def fail(ok, *values):
    if not np.all(ok):
      raise ValueError(message(*values))

  jax.lax.cond(jnp.all(ok), lambda: None, lambda: jax.debug.callback(fail, ok, *values))


def check_not_mid_loop(inner_count: Any, inner_steps: Any) -> None:
  """A fused call starts an outer step: the state must be between outer steps.

  Checked at run time, under ``jit`` too (:func:`refuse_unless`).
  """

  def message(taken):
    taken = int(np.max(taken))
    rest = (f"the remaining {inner_steps - taken}" if isinstance(inner_steps, int)
            else "the remaining")
    return (
        f"fused mode starts an outer step, but the state is {taken} Langevin "
        f"steps into one (a step-interleaved checkpoint, say): take {rest} "
        "step-interleaved steps first, with the walker as params."
    )

  refuse_unless(inner_count == 0, message, inner_count)


def check_at_anchor(params: Any, anchor: Any, when: Any = True) -> Any:
  """Where ``when`` holds, params must be the anchor, to rounding.

  Between outer steps the updates of Entropy-SGD put params on the anchor it
  stores (bit for bit but for the rounding of a multiply-add that XLA fuses
  in one program and not in the other). If they are not there, something
  changed the updates after it (a transform chained after it, lookahead,
  schedule-free) or the params between calls, and the stored anchor no
  longer describes the params. Checked at run time (:func:`refuse_unless`),
  to 4 ulps of the leaf's largest magnitude. Where the anchor holds a
  non-finite value the params must too (the positions are not compared).

  Every reduction here is a ``max`` over arithmetic alone (``abs``, ``-``,
  ``*``): XLA on CPU fuses those into the reduction, while a compare or
  select (and, in this program, ``abs(a) * 0``) materialises a leaf-sized
  temporary, and in fused mode (whose loop reuses the anchor's buffer) a copy
  of the anchor.
  """
  def same(p, a):
    wide = jnp.promote_types(p.dtype, jnp.float32)
    eps = jnp.asarray(jnp.finfo(p.dtype).eps, wide)
    p, a = p.astype(wide), a.astype(wide)
    # x * 0 is 0 for a finite x and NaN otherwise, and max propagates NaN:
    # whether a leaf holds a non-finite value, and a NaN distance.
    nonfinite_p = jnp.isnan(jnp.max(p * 0, initial=0))
    nonfinite_a = jnp.isnan(jnp.max(a * 0, initial=0))
    close = jnp.max(jnp.abs(p - a), initial=0) <= 4 * eps * jnp.max(jnp.abs(a), initial=0)
    return (~nonfinite_a & close) | (nonfinite_a & nonfinite_p)

  flags = [same(p, a) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor),
                                      strict=True)]
  at_anchor = jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
  refuse_unless(
      at_anchor | ~jnp.asarray(when),
      lambda: (
          "the params passed to update are not where Entropy-SGD's last update "
          "put them (the anchor, between outer steps): a transform applied "
          "after Entropy-SGD changed its updates (optax.chain(entropy_sgd(...), "
          "<transform>), reduce_on_plateau, lookahead or schedule_free around "
          "it), or the params were changed between calls. Put such a transform "
          "before it, pass it as inner= (every Langevin gradient) or make it "
          "part of the outer transform (local_entropy(optax.chain(optax.sgd(1.0), "
          "<transform>))). To change the weights yourself, start a new state "
          "with tx.init(params)."
      ),
  )
  return at_anchor
