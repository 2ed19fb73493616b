"""How the timing scripts time: the programs they compare, and A B A B ... repetitions.

The unit of every speed result is optax SGD-Nesterov taking L steps in one
jitted ``lax.scan`` (:func:`sgd_candidate`); against it runs the fused
Entropy-SGD outer step over the same L minibatches (:func:`entropy_candidate`),
with the paper's noise and inner and outer Nesterov momentum 0.9. Candidates
run alternately (:func:`alternate`), so that whatever else the machine does
falls on all of them alike; ``speed.py``, ``cost_scaling.py``,
``conv_in_loop.py``, ``ab_versions.py`` and ``noise_candidates.py`` time with
these.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

import entropy_optax

NOISE = 1e-4
"""The paper's thermal noise."""
MOMENTUM = 0.9
"""Nesterov momentum of SGD and of both of Entropy-SGD's loops."""


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds of one call of ``fn``, until its result is ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def time_chain(step: Callable[..., tuple], carry: tuple, batches: Any,
               calls: int) -> tuple[float, tuple]:
  """Seconds for ``calls`` donated steps, each fed the previous one's params and state."""
  start = time.perf_counter()
  for _ in range(calls):
    carry = step(*carry, batches)[:2]
  jax.block_until_ready(carry)
  return time.perf_counter() - start, carry


def alternate(calls: Mapping[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
  """Seconds of each call in each of ``repeats`` rounds, the candidates in turn (A B C A B C ...),
  after one warm-up call of each (compilation included)."""
  for fn in calls.values():
    jax.block_until_ready(fn())
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, fn in calls.items():
      times[name].append(time_call(fn))
  return times


def compile_donated(run: Callable[..., Any], params: Any, state: Any, batches: Any) -> Any:
  """``run(params, state, batches)`` compiled with params and state donated: the program whose
  ``memory_analysis()`` is the step's memory as a training loop runs it."""
  return jax.jit(run, donate_argnums=(0, 1)).lower(params, state, batches).compile()


def sgd_candidate(loss: Callable[..., jax.Array], inner_steps: int,
                  unroll: bool | int = False) -> tuple[optax.GradientTransformation, Callable]:
  """optax SGD-Nesterov over the L minibatches in one ``lax.scan``: (tx, run)."""
  del inner_steps  # the scan's length is the batches'
  tx = optax.sgd(0.1, momentum=MOMENTUM, nesterov=True)
  grad_fn = jax.grad(loss)

  def run(params, state, batches):
    def body(carry, batch):
      p, s = carry
      updates, s = tx.update(grad_fn(p, batch), s, p)
      return (optax.apply_updates(p, updates), s), None

    return jax.lax.scan(body, (params, state), batches, unroll=1 if unroll is False else unroll)[0]

  return tx, run


def entropy_candidate(loss: Callable[..., jax.Array], inner_steps: int,
                      module: ModuleType = entropy_optax,
                      **kwargs: Any) -> tuple[optax.GradientTransformation, Callable]:
  """The fused Entropy-SGD outer step of ``module`` (the package, or an older copy): (tx, run)."""
  tx = module.entropy_sgd(
      1.0, inner_steps=inner_steps, gamma=0.03, langevin_lr=0.1, mu_decay=0.75,
      inner_momentum=MOMENTUM, momentum=MOMENTUM, nesterov=True, **kwargs,
  )
  grad_fn = jax.grad(loss)

  def run(params, state, batches):
    # Minibatch indices as the scanned batches: slicing batches[1:] would copy.
    pick = lambda k: jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), batches)
    updates, state = tx.update(
        grad_fn(params, pick(0)), state, params, grad_fn=lambda p, k: grad_fn(p, pick(k)),
        batches=jnp.arange(1, inner_steps, dtype=jnp.int32),
    )
    return optax.apply_updates(params, updates), state

  return tx, run
