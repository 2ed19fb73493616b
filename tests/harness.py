"""Drivers that run a transform in each mode over the same minibatches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def mlp_loss(params, batch):
  """The JAX twin of reference.mlp_loss_and_grad's loss."""
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  r = h @ params["w2"] + params["b2"] - batch["y"]
  return 0.5 * jnp.sum(r**2) / batch["x"].shape[0]


def take(batches, i):
  return jax.tree.map(lambda a: a[i], batches)


def run_interleaved(tx, params, batches, loss=mlp_loss, calls=None):
  """One ``tx.update`` call per minibatch; returns (params, state)."""
  calls = calls or jax.tree.leaves(batches)[0].shape[0]
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch):
    updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  for i in range(calls):
    params, state = step(params, state, take(batches, i))
  return params, state


def run_fused(tx, params, batches, inner_steps, loss=mlp_loss, outer_steps=None):
  """One fused ``tx.update`` call per outer step; returns (params, state)."""
  n = jax.tree.leaves(batches)[0].shape[0]
  outer_steps = outer_steps or n // inner_steps
  state = tx.init(params)
  grad_fn = jax.grad(loss)

  @jax.jit
  def step(params, state, chunk):
    first = take(chunk, 0)
    rest = jax.tree.map(lambda a: a[1:], chunk)
    updates, state = tx.update(
        grad_fn(params, first), state, params, grad_fn=grad_fn, batches=rest
    )
    return optax.apply_updates(params, updates), state

  for t in range(outer_steps):
    chunk = jax.tree.map(lambda a: a[t * inner_steps : (t + 1) * inner_steps], batches)
    params, state = step(params, state, chunk)
  return params, state
