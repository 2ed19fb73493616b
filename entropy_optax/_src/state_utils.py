"""Reading the Entropy-SGD state out of any optax state that wraps it."""

from __future__ import annotations

from typing import Any

import jax
import optax

from entropy_optax._src.transform import EntropySGDState


def find_state(opt_state: optax.OptState) -> EntropySGDState:
  """The single :class:`EntropySGDState` inside ``opt_state``.

  Searches any pytree of states: ``optax.chain``, ``inject_hyperparams``,
  ``apply_if_finite``, ``MultiSteps`` and the like.

  Raises:
    ValueError: if ``opt_state`` holds no Entropy-SGD state, or several.
  """
  is_state = lambda node: isinstance(node, EntropySGDState)
  found = [node for node in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(node)]
  if len(found) != 1:
    raise ValueError(
        f"opt_state must hold exactly one Entropy-SGD state, found {len(found)}; "
        "pass the state of a transform built with entropy_sgd, entropy_adam or "
        "local_entropy."
    )
  return found[0]


def anchor_params(opt_state: optax.OptState) -> optax.Params:
  """The anchor x: the weights to evaluate, not the walker held in params.

  Args:
    opt_state: the state of an Entropy-SGD transform, alone or inside any
      wrapper (``optax.chain``, ``inject_hyperparams``, ``apply_if_finite``,
      ``MultiSteps``).

  Returns:
    The anchor, a pytree like the params.

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> tx = optax.chain(optax.clip(1.0), entropy_optax.entropy_sgd(0.1))
    >>> state = tx.init({"w": jnp.ones(2)})
    >>> entropy_optax.anchor_params(state)["w"]
    Array([1., 1.], dtype=float32)
  """
  return find_state(opt_state).anchor


def fused_carry(opt_state: optax.OptState) -> Any:
  """The carry that the last fused ``update`` call's ``grad_fn`` returned.

  Fused mode with ``carry=c`` threads ``c`` (mutable model state such as
  BatchNorm statistics) through every ``grad_fn(walker, batch, carry)``
  call of the inner loop and stores the final one in the state. None before
  the first such call.
  """
  return find_state(opt_state).carry
