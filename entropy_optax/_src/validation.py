"""Construction-time checks of hyperparameters.

Only concrete numbers are checked. Traced values (``optax.inject_hyperparams``
passes hyperparameters as arrays inside ``jit``) and schedules are accepted as
they are: their values are not known when the transform is built.
"""

from __future__ import annotations

import numbers
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def concrete_value(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None when it is not concrete."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  array = np.asarray(value)
  # jnp.issubdtype knows bfloat16 (inject_hyperparams casts to the params' dtype).
  if array.shape != () or not jnp.issubdtype(array.dtype, jnp.number):
    return None
  return float(array)


def is_static_zero(value: Any) -> bool:
  """True only for a Python number equal to 0.

  Arrays never count, even concrete ones: ``optax.inject_hyperparams`` passes
  concrete arrays to ``init`` and traced ones to ``update``, and both calls
  must build the same state structure.
  """
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _check_real(name: str, value: Any) -> float | None:
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a number or a schedule, got the bool {value!r}.")
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if not isinstance(value, numbers.Real):
    array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, jax.Array)) else None
    if array is None or array.shape != () or not jnp.issubdtype(array.dtype, jnp.number):
      raise TypeError(
          f"{name} must be a real scalar or an optax schedule, got {value!r} "
          f"of type {type(value).__name__}."
      )
  number = concrete_value(value)
  if number is not None and not np.isfinite(number):
    raise ValueError(f"{name} must be finite, got {number}.")
  return number


def check_non_negative(name: str, value: Any) -> None:
  number = _check_real(name, value)
  if number is not None and not number >= 0:
    raise ValueError(f"{name} must be >= 0, got {number}.")


def check_positive(name: str, value: Any) -> None:
  number = _check_real(name, value)
  if number is not None and not number > 0:
    raise ValueError(f"{name} must be > 0, got {number}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Checks 0 <= value < 1 (a decay or momentum coefficient)."""
  number = _check_real(name, value)
  if number is not None and not 0 <= number < 1:
    raise ValueError(f"{name} must lie in [0, 1), got {number}.")


def check_inner_steps(inner_steps: Any) -> int:
  if isinstance(inner_steps, jax.core.Tracer):
    raise TypeError(
        "inner_steps must be a static Python int, but it was traced. With "
        "optax.inject_hyperparams pass static_args=('inner_steps',)."
    )
  if isinstance(inner_steps, bool) or not isinstance(inner_steps, numbers.Integral):
    if isinstance(inner_steps, (np.ndarray, jax.Array)) and np.asarray(
        inner_steps
    ).shape == () and np.issubdtype(np.asarray(inner_steps).dtype, np.integer):
      inner_steps = int(inner_steps)
    else:
      raise TypeError(
          f"inner_steps must be a positive Python int, got {inner_steps!r} "
          f"of type {type(inner_steps).__name__}."
      )
  if inner_steps < 1:
    raise ValueError(f"inner_steps must be >= 1, got {inner_steps}.")
  return int(inner_steps)


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r}.")
  return bool(value)


def check_unroll(unroll: Any) -> int | bool:
  """``lax.scan``'s ``unroll``: a bool (False: a loop; True: no loop), or a static int >= 1."""
  if isinstance(unroll, (bool, np.bool_)):
    return bool(unroll)
  if isinstance(unroll, jax.core.Tracer):
    raise TypeError(
        "unroll must be static, but it was traced. With optax.inject_hyperparams "
        "pass static_args=('unroll',), or a bool (bools are not injected)."
    )
  if isinstance(unroll, (np.ndarray, jax.Array)) and np.shape(unroll) == () and np.issubdtype(
      np.asarray(unroll).dtype, np.integer
  ):
    unroll = int(unroll)
  if not isinstance(unroll, numbers.Integral):
    raise TypeError(
        "unroll must be a bool or a static Python int >= 1 (lax.scan's unroll), "
        f"got {unroll!r} of type {type(unroll).__name__}."
    )
  if unroll < 1:
    raise ValueError(f"unroll must be >= 1 (or True for a full unroll), got {unroll}.")
  return int(unroll)


# Update-time checks of how the transform is wrapped. optax's wrappers cannot
# be seen from a transform's arguments; the two below change what an update
# call means, so the transform looks for them among its callers' frames (only
# the frames whose code could be theirs; a few microseconds, at trace time
# under jit).
_MAX_FRAMES = 64


def _optax_frames():
  frame = sys._getframe(1)
  for _ in range(_MAX_FRAMES):
    if frame is None:
      return
    if frame.f_globals.get("__name__", "").startswith("optax"):
      yield frame
    frame = frame.f_back


def injected_schedules() -> tuple[str, ...]:
  """Names of the schedules an enclosing ``optax.inject_hyperparams`` evaluates."""
  for frame in _optax_frames():
    if frame.f_code.co_name == "update_fn" and "sched_hps" in frame.f_code.co_freevars:
      return tuple(sorted(frame.f_locals.get("sched_hps", {})))
  return ()


def inside_multisteps() -> bool:
  """True when ``optax.MultiSteps`` is calling the transform's update."""
  for frame in _optax_frames():
    code = frame.f_code
    if "self" in code.co_varnames or "self" in code.co_freevars:
      if isinstance(frame.f_locals.get("self"), optax.MultiSteps):
        return True
  return False


def check_update_context(fused: bool, inner_steps: int) -> None:
  """Refuses the wrappers that silently change what an update call means.

  * ``optax.MultiSteps`` around a fused call runs the outer step on every call
    but keeps the state of only every k-th: the other calls' minibatches are
    computed and thrown away.
  * ``optax.inject_hyperparams`` evaluates a schedule at its own count of
    update calls; in step-interleaved mode (L > 1) those are Langevin steps,
    so a schedule of the outer steps would run L times too fast.

  Raises:
    ValueError: saying what to do instead.
  """
  if fused and inside_multisteps():
    raise ValueError(
        "optax.MultiSteps wraps a fused Entropy-SGD update: it would run the "
        "outer step on every call and keep only every k-th, throwing the other "
        "calls' minibatches away. For more data per outer step raise "
        "inner_steps or the minibatch size; to accumulate gradients, call "
        "update without grad_fn and batches (step-interleaved mode), which "
        "MultiSteps supports."
    )
  if not fused and inner_steps > 1:
    names = injected_schedules()
    if names:
      listed = ", ".join(repr(n) for n in names)
      raise ValueError(
          f"optax.inject_hyperparams holds schedules for {listed} and evaluates "
          "them at its count of update calls. In step-interleaved mode each "
          f"call is one Langevin step ({inner_steps} per outer step), so they "
          f"would run {inner_steps} times too fast. Pass "
          f"static_args=({listed},) to inject_hyperparams: the transform then "
          "evaluates them at its outer-step count (they are no longer listed "
          "in state.hyperparams). Or use fused mode, where one update call is "
          "one outer step."
      )
