"""Checks of what the user passes: hyperparameters, update arguments, context.

Construction-time checks look at concrete numbers only. Traced values
(``optax.inject_hyperparams`` passes hyperparameters as arrays inside ``jit``)
and schedules are accepted as they are: their values are not known when the
transform is built. Update-time checks look at shapes, structures and dtypes,
which are static under ``jit``, and at how the transform is wrapped.
Wrong types raise ``TypeError``, wrong values and shapes ``ValueError``.
"""

from __future__ import annotations

import numbers
import sys
import types
from typing import Any, Iterator, Optional

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


def check_positive_int(name: str, value: Any) -> int:
  """A static Python int >= 1 (a count such as ``n_replicas``)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{name} must be a positive Python int, got {value!r} of type "
        f"{type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}.")
  return int(value)


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


def _optax_frames() -> Iterator[types.FrameType]:
  frame: Optional[types.FrameType] = sys._getframe(1)
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


# Update-time checks: the arguments of an update call.


def check_params_given(params: Any, what: str) -> None:
  """Entropy-SGD and Parle need the params: the walker or the anchor."""
  if params is None:
    raise ValueError(
        f"{what} needs params: call update(grads, state, params); in "
        "step-interleaved mode params is the walker x'."
    )


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number))


def check_like_params(name: str, tree: Any, params: Any) -> None:
  """Raises unless ``tree`` has the structure and shapes of ``params``."""
  if jax.tree.structure(tree) != jax.tree.structure(params):  # type: ignore[operator]
    raise ValueError(
        f"{name} must have the tree structure of params.\n"
        f"  {name}: {jax.tree.structure(tree)}\n"
        f"  params: {jax.tree.structure(params)}"
    )
  for (path, leaf), param in zip(
      jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(params), strict=True
  ):
    if not _is_array(leaf):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} must be an array, got "
          f"{type(leaf).__name__}."
      )
    if np.shape(leaf) != np.shape(param):
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}, but "
          f"the param there has shape {np.shape(param)}."
      )


def check_floating(params: Any) -> None:
  """Every leaf of params must be a float array: Langevin steps move them."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"params{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
          "Entropy-SGD moves params by Langevin steps, so every leaf must be a "
          "float array. Keep integer or bool leaves out of the optimized tree "
          "(optax.masked or optax.multi_transform with optax.set_to_zero)."
      )


def check_state_matches(anchor: Any, params: Any) -> None:
  """The state was built by ``init`` on params of this structure."""
  if jax.tree.structure(anchor) != jax.tree.structure(params):  # type: ignore[operator]
    raise ValueError(
        "opt_state was initialised for params of another structure: call "
        "tx.init on these params.\n"
        f"  params: {jax.tree.structure(params)}\n"
        f"  opt_state's anchor: {jax.tree.structure(anchor)}"
    )


def check_mode_args(grad_fn: Any, batches: Any, carry: Any, inner_steps: int) -> bool:
  """Checks the fused-mode keywords come together; returns True for fused mode."""
  if (grad_fn is None) != (batches is None):
    raise ValueError(
        "fused mode needs both grad_fn and batches (the remaining "
        f"inner_steps - 1 = {inner_steps - 1} minibatches); got only "
        f"{'grad_fn' if batches is None else 'batches'}. Pass neither for "
        "step-interleaved mode."
    )
  if carry is not None and grad_fn is None:
    raise ValueError("carry is threaded through grad_fn: pass grad_fn and batches too.")
  return grad_fn is not None


def check_not_mid_loop(inner_count: Any, inner_steps: int) -> None:
  """A fused call starts an outer step: the state must be between outer steps.

  ``inner_count`` is only known outside ``jit``; traced, it is not checked.
  """
  if isinstance(inner_count, jax.core.Tracer):
    return
  taken = int(np.max(np.asarray(inner_count)))
  if taken:
    raise ValueError(
        f"fused mode starts an outer step, but the state is {taken} Langevin "
        f"steps into one: take the remaining {inner_steps - taken} "
        "step-interleaved steps first."
    )


class BatchCountError(ValueError):
  """A fused call's ``batches`` do not hold inner_steps - 1 minibatches.

  ``make_train_step`` and the Flax helpers catch it to restate it in terms
  of the batches their caller passed.
  """

  def __init__(self, message: str, inner_steps: int):
    super().__init__(message)
    self.inner_steps = inner_steps


def check_batches(batches: Any, inner_steps: int, axis: int = 0) -> None:
  """Every leaf of ``batches`` holds inner_steps - 1 minibatches along ``axis``."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(batches):
    shape = np.shape(leaf)
    if len(shape) <= axis or shape[axis] != inner_steps - 1:
      raise BatchCountError(
          "batches must hold the remaining inner_steps - 1 = "
          f"{inner_steps - 1} minibatches along each leaf's "
          f"{'leading axis' if axis == 0 else f'axis {axis}'} (the grads passed "
          f"to update are the first of inner_steps = {inner_steps}), but "
          f"batches{jax.tree_util.keystr(path)} has shape {shape}.",
          inner_steps,
      )


def check_replicated(name: str, tree: Any, n_replicas: int) -> None:
  """Every leaf of ``tree`` holds the replicas along its leading axis."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = np.shape(leaf)
    if not shape or shape[0] != n_replicas:
      raise ValueError(
          f"{name} must hold the n_replicas = {n_replicas} replicas along each "
          f"leaf's leading axis, but {name}{jax.tree_util.keystr(path)} has shape "
          f"{shape}; build replicated params with entropy_optax.replicate."
      )
