"""Measures Entropy-SGD and Parle on 8 simulated CPU devices; prints JSON.

Run by tests/test_sharding.py in a subprocess, because the device count must
be set before jax is imported:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python tests/sharding_checks.py

It only measures (max differences, sharding specs, the collectives of the
compiled HLO); the tests decide.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import entropy_optax
from entropy_optax._src import noise as noise_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import hlo as hlo_tools  # noqa: E402  (collectives of a compiled program)

L = 3
OUTER_STEPS = 2
SIZES = (16, 32, 8)  # every sharded dimension divides by 8
BATCH = 32
# FSDP: every weight matrix sharded along one dimension, the biases too;
# b2 (8 numbers) stays replicated.
FSDP = {"w1": P(None, "data"), "b1": P("data"), "w2": P("data", None), "b2": P()}
KW = dict(inner_steps=L, gamma=0.1, noise=1e-2, momentum=0.9, inner_momentum=0.5, key=3)


def mlp_loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
  r = h @ params["w2"] + params["b2"] - batch["y"]
  return 0.5 * jnp.sum(r**2) / batch["x"].shape[0]


def elementwise_loss(params, batch):
  """A loss whose gradient is elementwise: sharded runs must be bitwise equal."""
  del batch
  return sum(jnp.sum(jnp.cos(p)) for p in jax.tree.leaves(params))


def problem(n_batches, seed=0):
  rng = np.random.default_rng(seed)
  d_in, hidden, d_out = SIZES
  params = {
      "w1": rng.normal(size=(d_in, hidden)) / np.sqrt(d_in),
      "b1": 0.1 * rng.normal(size=hidden),
      "w2": rng.normal(size=(hidden, d_out)) / np.sqrt(hidden),
      "b2": 0.1 * rng.normal(size=d_out),
  }
  batches = {"x": rng.normal(size=(n_batches, BATCH, d_in)),
             "y": rng.normal(size=(n_batches, BATCH, d_out))}
  as32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
  return as32(params), as32(batches)


def fused_step(tx, loss):
  grad_fn = jax.grad(loss)

  def step(params, state, chunk):
    first = jax.tree.map(lambda a: a[0], chunk)
    rest = jax.tree.map(lambda a: a[1:], chunk)
    updates, state = tx.update(grad_fn(params, first), state, params, grad_fn=grad_fn, batches=rest)
    return optax.apply_updates(params, updates), state

  return step


def interleaved_step(tx, loss):
  def step(params, state, batch):
    updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
    return optax.apply_updates(params, updates), state

  return step


def sgd_scan_step(loss, lr=0.1):
  """The gradient work of a fused step alone: L plain SGD steps, one scan."""
  grad_fn = jax.grad(loss)

  def step(params, state, chunk):
    sgd = lambda p, b: (jax.tree.map(lambda w, g: w - lr * g, p, grad_fn(p, b)), None)
    params, _ = sgd(params, jax.tree.map(lambda a: a[0], chunk))
    params, _ = jax.lax.scan(sgd, params, jax.tree.map(lambda a: a[1:], chunk))
    return params, state

  return step


def collectives(hlo_text: str) -> list[dict]:
  return [op._asdict() for op in hlo_tools.hlo_collectives(hlo_text)]


def run(step, params, state, chunks):
  """Compiles ``step`` once, runs it over ``chunks``; returns (params, state, hlo)."""
  compiled = jax.jit(step).lower(params, state, chunks[0]).compile()
  for chunk in chunks:
    params, state = compiled(params, state, chunk)
  return params, state, compiled.as_text()


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def same_bits(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def spec_str(spec) -> str:
  """A PartitionSpec as a string, trailing Nones (unsharded dims) dropped."""
  entries = list(spec)
  while entries and entries[-1] is None:
    entries.pop()
  return str(tuple(entries))


def spec_of(leaf) -> str:
  return spec_str(leaf.sharding.spec)


def chunks_of(batches, per_step, mode):
  """The per-call inputs: L-minibatch chunks (fused) or minibatches."""
  n = jax.tree.leaves(batches)[0].shape[0]
  if mode == "fused":
    return [jax.tree.map(lambda a: a[i:i + per_step], batches) for i in range(0, n, per_step)]
  return [jax.tree.map(lambda a: a[i], batches) for i in range(n)]


def state_specs(state, params) -> dict:
  """The spec of every params-shaped leaf of the state, by state field."""
  trees = {"anchor": state.anchor, "mu": state.mu, "momentum": state.momentum,
           "outer_trace": state.outer_state[0].trace, "params": params}
  return {field: {name: spec_of(leaf) for name, leaf in tree.items()} for field, tree in trees.items()}


def entropy_sgd_checks(mesh, generators) -> dict:
  params, batches = problem(L * OUTER_STEPS)
  param_sharding = {k: NamedSharding(mesh, spec) for k, spec in FSDP.items()}
  batch_sharding = NamedSharding(mesh, P(None, "data"))  # data parallel along the batch
  fsdp_params = jax.device_put(params, param_sharding)
  dp_batches = jax.device_put(batches, batch_sharding)
  out = {"expected_specs": {k: spec_str(s) for k, s in FSDP.items()}}
  for mode in ("fused", "interleaved"):
    make = fused_step if mode == "fused" else interleaved_step
    tx = entropy_optax.entropy_sgd(0.5, **KW)
    # A real model on FSDP params and data-parallel batches.
    single, _, _ = run(make(tx, mlp_loss), params, tx.init(params), chunks_of(batches, L, mode))
    sharded, state, hlo = run(make(tx, mlp_loss), fsdp_params, tx.init(fsdp_params),
                              chunks_of(dp_batches, L, mode))
    if mode == "fused":
      baseline = sgd_scan_step(mlp_loss)
    else:
      plain = optax.sgd(0.5, momentum=0.9)
      baseline = interleaved_step(plain, mlp_loss)
    _, _, base_hlo = run(baseline, fsdp_params,
                         (tx if mode == "fused" else plain).init(fsdp_params),
                         chunks_of(dp_batches, L, mode)[:1])
    out[mode] = {
        "max_diff": max_diff(single, sharded),
        "specs": state_specs(state, sharded),
        "collectives": collectives(hlo),
        "baseline_collectives": collectives(base_hlo),
    }
  # Noise alone: with an elementwise gradient every op is elementwise, so the
  # sharded run must reproduce the single-device bits. Both modes draw through
  # the same function: fused mode checks it.
  out["noise"] = {}
  for generator in generators:
    extra = {} if generator is None else {"noise_generator": generator}
    tx = entropy_optax.entropy_sgd(0.5, **KW, **extra)
    step = fused_step(tx, elementwise_loss)
    single, _, _ = run(step, params, tx.init(params), chunks_of(batches, L, "fused"))
    sharded, _, hlo = run(step, fsdp_params, tx.init(fsdp_params), chunks_of(dp_batches, L, "fused"))
    out["noise"][str(generator)] = {
        "same_bits": same_bits(single, sharded),
        "max_diff": max_diff(single, sharded),
        "full_size_random_bits": full_size_random_bits(hlo),
    }
  return out


def full_size_random_bits(hlo: str) -> bool:
  """Whether a u32 array of w1's full shape is in the per-device program:
  then every device draws all of w1's noise instead of its shard's."""
  return "u32[%d,%d]" % SIZES[:2] in hlo


def explicit_mode_checks() -> dict:
  """The noise check under explicit sharding (jax.make_mesh's default)."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
  params, batches = problem(L * OUTER_STEPS)
  tx = entropy_optax.entropy_sgd(0.5, **KW)
  step = fused_step(tx, elementwise_loss)
  single, _, _ = run(step, params, tx.init(params), chunks_of(batches, L, "fused"))
  with jax.set_mesh(mesh):
    fsdp_params = jax.device_put(params, {k: NamedSharding(mesh, s) for k, s in FSDP.items()})
    sharded, state, hlo = run(step, fsdp_params, tx.init(fsdp_params), chunks_of(batches, L, "fused"))
  return {
      "specs": state_specs(state, sharded),
      "full_size_random_bits": full_size_random_bits(hlo),
      "same_bits": same_bits(single, sharded),
      "max_diff": max_diff(single, sharded),
  }


def parle_checks() -> dict:
  """Parle with 4 replicas along mesh axis "replica", each FSDP over 2 devices."""
  n = 4
  mesh = jax.make_mesh((n, 2), ("replica", "data"), axis_types=(AxisType.Auto,) * 2)
  params, batches = problem(n * L * OUTER_STEPS, seed=1)
  replicated = entropy_optax.replicate(params, n)
  # (replica, step, batch, features): each replica its own minibatches.
  batches = jax.tree.map(lambda a: a.reshape((n, L * OUTER_STEPS) + a.shape[1:]), batches)
  param_sharding = {k: NamedSharding(mesh, P("replica", *spec)) for k, spec in FSDP.items()}
  sharded_params = jax.device_put(replicated, param_sharding)
  sharded_batches = jax.device_put(batches, NamedSharding(mesh, P("replica", None, "data")))
  grad_fn = jax.grad(mlp_loss)

  def parle_step(tx):
    def step(params, state, chunk):
      grads = jax.vmap(grad_fn)(params, jax.tree.map(lambda a: a[:, 0], chunk))
      updates, state = tx.update(grads, state, params, grad_fn=grad_fn,
                                 batches=jax.tree.map(lambda a: a[:, 1:], chunk))
      return optax.apply_updates(params, updates), state
    return step

  def chunks(b):
    return [jax.tree.map(lambda a: a[:, i:i + L], b) for i in range(0, L * OUTER_STEPS, L)]

  tx = entropy_optax.parle(0.5, n_replicas=n, rho=0.5, **KW)
  single, single_state, _ = run(parle_step(tx), replicated, tx.init(replicated), chunks(batches))
  sharded, state, hlo = run(parle_step(tx), sharded_params, tx.init(sharded_params),
                            chunks(sharded_batches))
  # The same replicas without Parle's coupling: vmapped entropy_sgd.
  alone = entropy_optax.entropy_sgd(0.5, **KW)
  vmapped = optax.GradientTransformationExtraArgs(
      jax.vmap(alone.init),
      lambda g, s, p, grad_fn, batches: jax.vmap(
          lambda g, s, p, b: alone.update(g, s, p, grad_fn=grad_fn, batches=b))(g, s, p, batches),
  )
  _, _, base_hlo = run(parle_step(vmapped), sharded_params, vmapped.init(sharded_params),
                       chunks(sharded_batches)[:1])
  return {
      "max_diff": max_diff(single, sharded),
      "reference_max_diff": max_diff(entropy_optax.reference_params(single_state),
                                     entropy_optax.reference_params(state)),
      "param_specs": {k: spec_of(v) for k, v in sharded.items()},
      "anchor_specs": {k: spec_of(v) for k, v in state.replicas.anchor.items()},
      "reference_specs": {k: spec_of(v) for k, v in state.reference.items()},
      "expected_param_specs": {k: spec_str(P("replica", *s)) for k, s in FSDP.items()},
      "expected_reference_specs": {k: spec_str(s) for k, s in FSDP.items()},
      "collectives": collectives(hlo),
      "baseline_collectives": collectives(base_hlo),
      "reference_shard_elements": sum(
          leaf.addressable_shards[0].data.size for leaf in jax.tree.leaves(state.reference)),
  }


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  has_generators = "noise_generator" in inspect.signature(entropy_optax.entropy_sgd).parameters
  generators = list(noise_lib.NOISE_GENERATORS) if has_generators else [None]
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  results = {
      "entropy_sgd": entropy_sgd_checks(mesh, generators),
      "explicit": explicit_mode_checks(),
      "parle": parle_checks(),
  }
  print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
  main()
