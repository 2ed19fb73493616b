"""Training runs for the checkpoint tests: whole, or stopped, saved and resumed.

The test process runs each case uninterrupted and also stops it part way and
saves a checkpoint ``DIR/CASE-FORMAT``; this file, run as a script, resumes
those checkpoints in one fresh process and writes each run's final params and
optimizer state to ``DIR/CASE-FORMAT.npz``:

  python tests/resume_run.py DIR CASE-FORMAT [CASE-FORMAT ...]

FORMAT is ``orbax`` (``orbax.checkpoint.StandardCheckpointer``) or ``flax``
(``flax.serialization.to_bytes`` / ``from_bytes``). The restore target is
``tx.init(params)``, as the README recommends.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax

INNER_STEPS = 4


class Case(NamedTuple):
  """A run: ``calls`` jitted ``step(params, state, i)`` calls from ``init``."""

  tx: optax.GradientTransformation
  init: Callable[[], tuple[Any, Any]]
  step: Callable[[Any, Any, jax.Array], tuple[Any, Any]]
  calls: int
  stop: int


def _mlp_params() -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  return {
      "w1": jnp.asarray(rng.normal(size=(3, 5)) / np.sqrt(3), jnp.float32),
      "b1": jnp.zeros(5, jnp.float32),
      "w2": jnp.asarray(rng.normal(size=(5, 2)) / np.sqrt(5), jnp.float32),
      "b2": jnp.zeros(2, jnp.float32),
  }


def _batches(n: int) -> dict[str, jax.Array]:
  rng = np.random.default_rng(1)
  return {
      "x": jnp.asarray(rng.normal(size=(n, 8, 3)), jnp.float32),
      "y": jnp.asarray(rng.normal(size=(n, 8, 2)), jnp.float32),
  }


def _loss(params, batch, shift):
  """A squared loss on inputs centred by ``shift``, a BatchNorm-like statistic."""
  h = jnp.tanh((batch["x"] - shift) @ params["w1"] + params["b1"])
  return 0.5 * jnp.mean(jnp.sum((h @ params["w2"] + params["b2"] - batch["y"]) ** 2, -1))


def _grad_fn(params, batch, shift):
  """The fused-mode carry contract; the carry is a running mean of the inputs."""
  grads = jax.grad(_loss)(params, batch, shift)
  return grads, 0.9 * shift + 0.1 * jnp.mean(batch["x"], axis=(0,))


def interleaved_case() -> Case:
  """chain + inject_hyperparams, stopped two Langevin steps into an outer step."""
  tx = optax.chain(
      optax.clip_by_global_norm(5.0),
      optax.inject_hyperparams(
          entropy_optax.entropy_sgd, static_args=("inner_steps", "gamma")
      )(
          learning_rate=0.5,
          inner_steps=INNER_STEPS,
          gamma=entropy_optax.scoping(0.03, 0.1),
          noise=1e-2,
          momentum=0.9,
          inner_momentum=0.9,
          weight_decay=1e-3,
          key=11,
      ),
  )
  batches = _batches(3 * INNER_STEPS)
  shift = jnp.zeros(3, jnp.float32)

  def init():
    params = _mlp_params()
    return params, tx.init(params)

  @jax.jit
  def step(params, state, i):
    batch = jax.tree.map(lambda a: a[i], batches)
    updates, state = tx.update(jax.grad(_loss)(params, batch, shift), state, params)
    return optax.apply_updates(params, updates), state

  return Case(tx, init, step, calls=3 * INNER_STEPS, stop=INNER_STEPS + 2)


def fused_case() -> Case:
  """Fused mode with a carry and an ``inner`` transform, stopped between outer steps."""
  tx = entropy_optax.entropy_sgd(
      0.5,
      inner_steps=INNER_STEPS,
      gamma=entropy_optax.scoping(0.03, 0.1),
      noise=1e-2,
      momentum=0.9,
      inner_momentum=0.9,
      key=jax.random.key(5),
      inner=optax.clip_by_global_norm(5.0),
  )
  batches = _batches(4 * INNER_STEPS)

  def init():
    params = _mlp_params()
    return params, tx.init(params)._replace(carry=jnp.zeros(3, jnp.float32))

  @jax.jit
  def step(params, state, t):
    chunk = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, t * INNER_STEPS, INNER_STEPS), batches
    )
    first = jax.tree.map(lambda a: a[0], chunk)
    rest = jax.tree.map(lambda a: a[1:], chunk)
    grads, shift = _grad_fn(params, first, entropy_optax.find_state(state).carry)
    updates, state = tx.update(
        grads, state, params, grad_fn=_grad_fn, batches=rest, carry=shift
    )
    return optax.apply_updates(params, updates), state

  return Case(tx, init, step, calls=4, stop=2)


CASES = {"interleaved": interleaved_case, "fused": fused_case}


def run(case: Case, params: Any, state: Any, start: int, stop: int) -> tuple[Any, Any]:
  for i in range(start, stop):
    params, state = case.step(params, state, jnp.int32(i))
  return params, state


def save(fmt: str, path: pathlib.Path, tree: Any) -> None:
  if fmt == "orbax":
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path.absolute(), tree)
  else:
    from flax import serialization

    path.write_bytes(serialization.to_bytes(tree))


def restore(fmt: str, path: pathlib.Path, target: Any) -> Any:
  if fmt == "orbax":
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path.absolute(), target)
  from flax import serialization

  return serialization.from_bytes(target, path.read_bytes())


def main(argv: list[str]) -> None:
  directory = pathlib.Path(argv[0])
  for job in argv[1:]:
    name, fmt = job.split("-")
    case = CASES[name]()
    params, state = case.init()
    target = {"params": params, "opt_state": state}
    restored = restore(fmt, directory / job, target)
    params, state = run(case, restored["params"], restored["opt_state"], case.stop, case.calls)
    leaves = jax.tree.leaves((params, state))
    np.savez(directory / f"{job}.npz", *[np.asarray(leaf) for leaf in leaves])


if __name__ == "__main__":
  main(sys.argv[1:])
