"""The scope schedule of Entropy-SGD and evaluation of scalar hyperparameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax._src import validation


def scoping(gamma0: float, gamma1: float) -> optax.Schedule:
  r"""The paper's "scoping" schedule of the scope gamma.

  .. math::

    \gamma_t = \gamma_0 (1 + \gamma_1)^t,

  where :math:`t` counts the outer steps already taken (0 during the first
  one). The authors' code calls :math:`\gamma_0` ``--gamma`` and
  :math:`\gamma_1` ``--scoping``. Pass the result as ``gamma`` to
  :func:`entropy_optax.entropy_sgd`, which evaluates it once per outer step.

  Args:
    gamma0: the initial scope, >= 0.
    gamma1: the growth rate per outer step, >= 0.

  Returns:
    An optax schedule mapping the outer-step count to the scope.

  Examples:
    >>> import entropy_optax
    >>> schedule = entropy_optax.scoping(1e-4, 1e-3)
    >>> [round(float(schedule(t)), 8) for t in (0, 1, 1000)]
    [0.0001, 0.0001001, 0.00027169]

  References:
    Chaudhari et al., `Entropy-SGD: Biasing Gradient Descent Into Wide Valleys
    <https://arxiv.org/abs/1611.01838>`_, ICLR 2017.
  """
  validation.check_non_negative("gamma0", gamma0)
  validation.check_non_negative("gamma1", gamma1)

  def schedule(count: jax.typing.ArrayLike) -> jax.Array:
    # exp(t log1p(gamma1)) in float32 at least: rounding 1 + gamma1 first would
    # compound its error t times ((1 + 1e-3)^1000 is 5e-5 off in float32).
    dtype = jnp.promote_types(jnp.result_type(gamma0, gamma1), jnp.float32)
    growth = jnp.log1p(jnp.asarray(gamma1, dtype)) * jnp.asarray(count, dtype)
    return jnp.asarray(gamma0, dtype) * jnp.exp(growth)

  return schedule


def evaluate(value: Any, count: jax.Array) -> Any:
  """A hyperparameter's value at outer step ``count``: calls it if a schedule."""
  return value(count) if callable(value) else value


def evaluate_non_negative(value: Any, count: jax.Array) -> Any:
  """:func:`evaluate`, clipped at 0.

  Python numbers are checked when the transform is built; a schedule's value,
  or an array (``optax.inject_hyperparams`` passes arrays), is only known at
  run time, when it cannot raise: a negative value (a linear decay that
  overshoots, say) counts as 0.
  """
  if isinstance(value, (int, float)):
    return value
  return jnp.maximum(evaluate(value, count), 0)
