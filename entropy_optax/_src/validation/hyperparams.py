"""Construction-time checks: the hyperparameters a factory is given.

They look at concrete numbers only. Traced values (``optax.inject_hyperparams``
passes hyperparameters as arrays inside ``jit``) and schedules are accepted as
they are: their values are not known when the transform is built. Wrong types
raise ``TypeError``, wrong values ``ValueError``, naming the argument.
"""

from __future__ import annotations

import numbers
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


def check_fraction(name: str, value: Any) -> None:
  """Checks 0 < value <= 1 (a step towards a target, 1 reaching it)."""
  number = _check_real(name, value)
  if number is not None and not 0 < number <= 1:
    raise ValueError(f"{name} must lie in (0, 1], got {number}.")


def check_transform(name: str, value: Any, example: str) -> None:
  """``value`` must be an ``optax.GradientTransformation``."""
  if not isinstance(value, optax.GradientTransformation):
    raise TypeError(
        f"{name} must be an optax.GradientTransformation such as {example}, "
        f"got {type(value).__name__}."
    )


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def check_inner_steps(inner_steps: Any, *, static: bool = False) -> Any:
  """L: a Python int >= 1, or (``static=False``) a traced integer scalar.

  ``optax.inject_hyperparams`` injects the numeric ``inner_steps`` (its
  default included): a concrete array at ``init``, a traced one at ``update``.
  Step-interleaved mode compares the Langevin count with it at run time, and
  fused mode takes L from its ``batches``, so a traced L works in both;
  :func:`entropy_optax.parle` needs it static.
  """
  if isinstance(inner_steps, jax.core.Tracer):
    if static or not jnp.issubdtype(inner_steps.dtype, jnp.integer) or inner_steps.shape:
      raise TypeError(
          "inner_steps must be a static Python int, but it was traced. With "
          "optax.inject_hyperparams pass static_args=('inner_steps',)."
      )
    return inner_steps
  return check_positive_int("inner_steps", inner_steps)


def check_positive_int(name: str, value: Any) -> int:
  """A Python int >= 1 (a count such as ``n_replicas`` or ``inner_steps``).

  A concrete integer scalar array counts as its value: it is what
  ``optax.inject_hyperparams`` passes to ``init``, and what a checkpoint
  restores.
  """
  if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not isinstance(
      value, jax.core.Tracer) and np.shape(value) == () and jnp.issubdtype(
          np.asarray(value).dtype, jnp.integer):
    value = int(value)
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
  try:
    return check_positive_int("unroll", unroll)
  except TypeError:
    raise TypeError(
        "unroll must be a bool or a static Python int >= 1 (lax.scan's unroll), "
        f"got {unroll!r} of type {type(unroll).__name__}."
    ) from None
  except ValueError:
    raise ValueError(
        f"unroll must be >= 1 (or True for a full unroll), got {unroll}."
    ) from None


def check_local_entropy_args(gamma: Any, num_steps: int, burn_in: int,
                             num_lambdas: int) -> float | None:
  """The arguments of :func:`entropy_optax.diagnostics.local_entropy_estimate`.

  Returns ``gamma``'s value where it is concrete (None when traced).
  """
  concrete_gamma = concrete_value(gamma)
  if concrete_gamma is not None and concrete_gamma <= 0:
    raise ValueError(f"gamma must be positive for a normalisable Gibbs measure, got {gamma}.")
  if num_steps < 1 or burn_in < 0 or num_lambdas < 0:
    raise ValueError(
        "num_steps must be at least 1 and burn_in, num_lambdas non-negative; got "
        f"num_steps={num_steps}, burn_in={burn_in}, num_lambdas={num_lambdas}."
    )
  return concrete_gamma
