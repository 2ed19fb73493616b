"""The Entropy-SGD and Parle states, and reading them out of any optax state that wraps them."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import optax


class EntropySGDState(NamedTuple):
  """State of :func:`~entropy_optax.local_entropy` (and so of ``entropy_sgd``, ``entropy_adam``).

  In step-interleaved mode the params passed to ``update`` are the walker x';
  the anchor x lives here. :func:`entropy_optax.anchor_params` finds it.
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  """Outer steps taken (int32); the scope schedule is evaluated at it."""
  inner_count: jax.Array
  """Langevin steps taken in the current outer step, in [0, inner_steps)."""
  anchor: optax.Params
  """The anchor x: the weights to evaluate."""
  mu: optax.Params
  """Running mean of the walker, the estimate of <x'>; equal to the anchor
  between outer steps."""
  momentum: Optional[optax.Params]
  """Inner momentum buffer m, zero between outer steps; None when the
  transform keeps no inner momentum (``inner_momentum=None``)."""
  key: jax.Array
  """Raw uint32 PRNG key data; constant: each step folds in its counters."""
  outer_state: optax.OptState
  """State of the outer transform, which receives D = x - mu as its updates."""
  inner_state: optax.OptState
  """State of the ``inner`` transform applied to every Langevin gradient."""
  skipped: jax.Array
  """Outer steps abandoned because a non-finite value appeared (int32)."""
  carry: Any
  """The last fused call's ``grad_fn`` carry (BatchNorm statistics, say);
  None until a fused call passes ``carry``."""


class ParleState(NamedTuple):
  """State of :func:`~entropy_optax.parle`."""

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax states do
  """Outer steps taken, i.e. reference updates (int32); rho is evaluated at it."""
  inner_count: jax.Array
  """Step-interleaved calls taken in the current outer step, in
  [0, inner_steps)."""
  reference: optax.Params
  """The reference x_ref: the weights to evaluate, shaped like one replica."""
  replicas: EntropySGDState
  """The replicas' Entropy-SGD states, every leaf with a leading replica axis.
  The replicas keep in step: when one abandons an outer step (a non-finite
  value), all do, and each one's ``skipped`` counts it."""


def _is_entropy_state(node: Any) -> bool:
  return isinstance(node, EntropySGDState)


def find_all(opt_state: optax.OptState, predicate: Any) -> list[Any]:
  """Every node of the pytree ``opt_state`` for which ``predicate`` holds."""
  return [
      node for node in jax.tree.leaves(opt_state, is_leaf=predicate) if predicate(node)
  ]


def find_one(opt_state: optax.OptState, state_type: type, made_by: str) -> Any:
  """The single node of type ``state_type`` inside the pytree ``opt_state``.

  Raises:
    ValueError: if ``opt_state`` holds none, or several; ``made_by`` names the
      factories whose states are of that type.
  """
  found = find_all(opt_state, lambda node: isinstance(node, state_type))
  if len(found) != 1:
    raise ValueError(
        f"opt_state must hold exactly one {state_type.__name__}, found {len(found)}; "
        f"pass the state of a transform built with {made_by}."
    )
  return found[0]


def holds_entropy_state(opt_state: optax.OptState) -> bool:
  """True when ``opt_state`` holds an :class:`EntropySGDState` anywhere."""
  return bool(find_all(opt_state, _is_entropy_state))


def find_state(opt_state: optax.OptState) -> EntropySGDState:
  """The single :class:`EntropySGDState` inside ``opt_state``.

  Searches any pytree of states: ``optax.chain``, ``inject_hyperparams``,
  ``apply_if_finite``, ``MultiSteps`` and the like. Read what you need from
  its fields: ``count`` and ``skipped`` to log, ``carry`` for the carry the
  last fused call's ``grad_fn`` returned (mutable model state such as
  BatchNorm statistics; None before the first such call), ``anchor`` (also
  :func:`anchor_params`).

  Raises:
    ValueError: if ``opt_state`` holds no Entropy-SGD state, or several.

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> tx = optax.chain(optax.clip(1.0), entropy_optax.entropy_sgd(0.1, inner_steps=5))
    >>> state = tx.init(jnp.ones(2))
    >>> int(entropy_optax.find_state(state).inner_count)
    0

    The carry of a fused call that threads one:

    >>> tx = entropy_optax.entropy_sgd(0.1, inner_steps=3)
    >>> params = jnp.ones(2)
    >>> count_calls = lambda p, batch, calls: (p, calls + 1)  # grads, new carry
    >>> _, state = tx.update(params, tx.init(params), params, grad_fn=count_calls,
    ...                      batches=jnp.zeros(2), carry=jnp.int32(1))
    >>> int(entropy_optax.find_state(state).carry)
    3
  """
  return find_one(opt_state, EntropySGDState, "entropy_sgd, entropy_adam or local_entropy")


def replace_carry(opt_state: optax.OptState, carry: Any) -> optax.OptState:
  """``opt_state`` with its Entropy-SGD state's carry slot set to ``carry``.

  Seed the slot before jitting a fused step that threads a carry: the state
  then keeps one structure and the step compiles once. Works inside any
  wrapper (``optax.chain``, ``inject_hyperparams``, ...).

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> tx = optax.chain(optax.clip(1.0), entropy_optax.entropy_sgd(0.1))
    >>> state = entropy_optax.replace_carry(tx.init(jnp.ones(2)), {"mean": jnp.zeros(3)})
    >>> entropy_optax.find_state(state).carry["mean"].shape
    (3,)
  """
  find_state(opt_state)
  return jax.tree.map(
      lambda node: node._replace(carry=carry) if _is_entropy_state(node) else node,
      opt_state,
      is_leaf=_is_entropy_state,
  )


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
