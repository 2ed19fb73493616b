"""One process of the README's multi-host recipe, on CPU; writes JSON.

Run by tests/test_multihost.py, twice at once, joined over loopback:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
      python tests/multihost_worker.py --process-id I --num-processes 2 \\
          --port PORT --out results_I.json

Each process owns 4 simulated CPU devices, so the global mesh has 8; the
cross-process collectives run on gloo (TCP on 127.0.0.1). Following the
README ("Scaling out", "Many hosts", steps 1-4), every process:

1. calls ``jax.distributed.initialize`` before anything else;
2. feeds only its share of every global batch, through
   ``jax.make_array_from_process_local_data``;
3. initialises the params from the same seed as the other process and
   ``jax.device_put``s them with their ``NamedSharding`` (FSDP);
4. reads the results with ``multihost_utils.process_allgather``.

It runs (a) fused Entropy-SGD, (b) step-interleaved Entropy-SGD and (c) fused
Parle (replicas along mesh axis "replica", FSDP within a replica along
"data"), with noise on. Then it runs some of the three again unsharded on
one local device (process 0 the Entropy-SGD runs, process 1 Parle: compiling
dominates the runtime, and the references do not depend on the process). It
only measures: it writes every leaf of the final params and optimizer state of
each run, sharded and single-device, and the test decides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

L = 3
OUTER_STEPS = 2
SIZES = (16, 32, 8)  # d_in, hidden, d_out: w1's and w2's first axes divide by 8
BATCH = 32  # global batch: 4 rows per device on 8 devices
N_REPLICAS = 4
# Every hyperparameter explicit: the test must not depend on the defaults.
# noise = 1e-2 moves every weight by ~1e-3 per Langevin step, far above the
# tolerance, so noise that changed with the sharding would show.
KW = dict(
    inner_steps=L,
    gamma=0.1,
    langevin_lr=0.1,
    noise=1e-2,
    mu_decay=0.75,
    inner_momentum=0.5,
    nesterov=True,
    momentum=0.9,
    weight_decay=1e-4,
    scale_by_gamma=False,
    key=3,
    noise_generator="hash",
)
LEARNING_RATE = 0.5
RHO = 0.5


def _gloo_on_loopback() -> bool:
  """Makes jax's gloo collectives listen on 127.0.0.1.

  jax creates them with ``make_gloo_tcp_collectives(distributed_client=...)``,
  and gloo then binds to the address of the machine's hostname; there is no
  flag for it. Passing ``hostname="127.0.0.1"`` keeps the test on loopback
  wherever the hostname resolves. Returns whether the hook is in place (a
  jaxlib without it falls back to gloo's default).
  """
  from jax._src import xla_bridge

  jaxlib_module = getattr(xla_bridge, "_jax", None)
  make = getattr(jaxlib_module, "make_gloo_tcp_collectives", None)
  if make is None:
    return False

  def make_on_loopback(distributed_client, hostname=None, interface=None):
    if hostname is None and interface is None:
      hostname = "127.0.0.1"
    return make(distributed_client=distributed_client, hostname=hostname, interface=interface)

  try:
    jaxlib_module.make_gloo_tcp_collectives = make_on_loopback
  except (AttributeError, TypeError):
    return False
  return True


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--num-processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", required=True)
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = _parse_args(argv)
  t0 = time.perf_counter()

  import jax

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  gloo_on_loopback = _gloo_on_loopback()
  address = f"127.0.0.1:{args.port}"
  # README step 1: first thing, before any computation (entropy_optax is
  # imported after it, in case an import builds an array).
  jax.distributed.initialize(
      coordinator_address=address,
      num_processes=args.num_processes,
      process_id=args.process_id,
      coordinator_bind_address=address,  # loopback only, not [::]
      cluster_detection_method="deactivate",
      initialization_timeout=120,
      heartbeat_timeout_seconds=30,
      shutdown_timeout_seconds=30,
  )
  t_init = time.perf_counter()

  import jax.numpy as jnp
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

  import entropy_optax

  n_devices = jax.device_count()

  # -- the problem: an MLP, identical in every process (same seed) ---------

  def loss_fn(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    r = h @ params["w2"] + params["b2"] - batch["y"]
    return 0.5 * jnp.sum(r**2) / batch["x"].shape[0]

  def problem(n_batches, seed):
    """Params and (n_batches, BATCH, ...) minibatches, as float32 numpy."""
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
    as32 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float32), tree)
    return as32(params), as32(batches)

  # -- the steps, as in the README and tests/sharding_checks.py ------------

  def fused_step(tx):
    grad_fn = jax.grad(loss_fn)

    def step(params, state, chunk):
      first = jax.tree.map(lambda a: a[0], chunk)
      rest = jax.tree.map(lambda a: a[1:], chunk)
      updates, state = tx.update(grad_fn(params, first), state, params,
                                 grad_fn=grad_fn, batches=rest)
      return optax.apply_updates(params, updates), state

    return step

  def interleaved_step(tx):
    def step(params, state, batch):
      updates, state = tx.update(jax.grad(loss_fn)(params, batch), state, params)
      return optax.apply_updates(params, updates), state

    return step

  def parle_step(tx):
    grad_fn = jax.grad(loss_fn)  # ONE replica's gradient: parle vmaps it

    def step(params, state, chunk):  # chunk leaves: (replica, L, batch, ...)
      first = jax.tree.map(lambda a: a[:, 0], chunk)
      rest = jax.tree.map(lambda a: a[:, 1:], chunk)
      updates, state = tx.update(jax.vmap(grad_fn)(params, first), state, params,
                                 grad_fn=grad_fn, batches=rest)
      return optax.apply_updates(params, updates), state

    return step

  def train(step, params, state, inputs):
    step = jax.jit(step)
    for x in inputs:
      params, state = step(params, state, x)
    return params, state

  # -- README step 2: each process feeds only its share ---------------------

  shares = {}  # run -> (local elements fed, global elements) of its batches

  def local_share(a: np.ndarray, sharding: NamedSharding) -> np.ndarray:
    """This process's block of the global array ``a`` under ``sharding``
    (what a real input pipeline would load on this host alone)."""
    indices = sharding.addressable_devices_indices_map(a.shape).values()
    block = []
    for dim, size in enumerate(a.shape):
      starts = [idx[dim].indices(size)[0] for idx in indices]
      stops = [idx[dim].indices(size)[1] for idx in indices]
      block.append(slice(min(starts), max(stops)))
    return a[tuple(block)]

  def feed(run, tree, sharding):
    def one(a):
      local = local_share(a, sharding)
      fed, total = shares.get(run, (0, 0))
      shares[run] = (fed + local.size, total + a.size)
      return jax.make_array_from_process_local_data(sharding, local, a.shape)

    return jax.tree.map(one, tree)

  # -- README step 4: read the results on every process ---------------------

  not_global = []  # leaves that are not global arrays (should be none)

  def gathered(tree):
    """The global value of every leaf, on every process. Every leaf must be
    a global (not fully addressable) array: for those ``tiled=True`` returns
    the array itself, where a process-local leaf would be concatenated."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        not_global.append(jax.tree_util.keystr(path))
    return multihost_utils.process_allgather(tree, tiled=True)

  def dump(tree):
    """{path: {"dtype", "shape", "values"}} for every leaf; float32 values
    survive the trip through JSON exactly."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      a = np.asarray(leaf)
      if a.dtype == np.float32:
        values = a.astype(np.float64).tolist()
      else:
        values = a.tolist()
      out[jax.tree_util.keystr(path)] = {"dtype": str(a.dtype), "shape": list(a.shape),
                                         "values": values}
    return out

  local_device = jax.local_devices()[0]

  def on_one_device(tree):
    return jax.device_put(tree, local_device)

  def spec_entries(spec):
    """A PartitionSpec as a list of mesh axis names (or None), trailing
    unsharded dimensions dropped."""
    entries = [None if e is None else str(e) for e in spec]
    while entries and entries[-1] is None:
      entries.pop()
    return entries

  def mesh_layout(mesh):
    """The owning process of every device of the mesh, in mesh order."""
    return np.vectorize(lambda d: d.process_index)(mesh.devices).tolist()

  results = {
      "process_id": jax.process_index(),
      "process_count": jax.process_count(),
      "device_count": n_devices,
      "local_device_count": jax.local_device_count(),
      "backend": jax.default_backend(),
      "cpu_collectives": jax.config.jax_cpu_collectives_implementation,
      "gloo_on_loopback": gloo_on_loopback,
      "jax_version": jax.__version__,
      "runs": {},
  }
  timings = {"initialize_s": t_init - t0}

  # Each run: a step maker, a transform, the params and the global inputs
  # (one per call) as numpy, and how to shard params and inputs.
  runs = {}

  # -- Entropy-SGD: FSDP params, data-parallel batches, one "data" axis -----

  mesh = jax.make_mesh((n_devices,), ("data",), axis_types=(AxisType.Auto,))
  results["mesh_layout"] = mesh_layout(mesh)

  def fsdp(leaf):  # the README's rule: split the first axis when it divides
    spec = P("data") if leaf.ndim and leaf.shape[0] % n_devices == 0 else P()
    return NamedSharding(mesh, spec)

  params, batches = problem(L * OUTER_STEPS, seed=0)
  tx = entropy_optax.entropy_sgd(LEARNING_RATE, **KW)
  runs["fused"] = dict(
      make_step=fused_step, tx=tx, params=params, param_sharding=fsdp,
      inputs=[jax.tree.map(lambda a: a[i:i + L], batches) for i in range(0, L * OUTER_STEPS, L)],
      input_sharding=NamedSharding(mesh, P(None, "data")))  # (step, batch, ...)
  runs["interleaved"] = dict(
      make_step=interleaved_step, tx=tx, params=params, param_sharding=fsdp,
      inputs=[jax.tree.map(lambda a: a[i], batches) for i in range(L * OUTER_STEPS)],
      input_sharding=NamedSharding(mesh, P("data")))  # (batch, ...)

  # -- Parle: replicas along "replica", FSDP within a replica along "data" --

  n_replica_devices = int(np.gcd(N_REPLICAS, n_devices))
  parle_mesh = jax.make_mesh((n_replica_devices, n_devices // n_replica_devices),
                             ("replica", "data"), axis_types=(AxisType.Auto, AxisType.Auto))
  results["parle_mesh_layout"] = mesh_layout(parle_mesh)
  n_data = parle_mesh.shape["data"]

  def replica_fsdp(leaf):  # leaf: (replica, ...); FSDP the first axis of one replica
    one = P("data") if leaf.ndim > 1 and leaf.shape[1] % n_data == 0 else P()
    return NamedSharding(parle_mesh, P("replica", *one))

  params, batches = problem(N_REPLICAS * L * OUTER_STEPS, seed=1)
  # (replica, step, batch, ...): each replica its own minibatches.
  batches = jax.tree.map(lambda a: a.reshape((N_REPLICAS, L * OUTER_STEPS) + a.shape[1:]), batches)
  runs["parle"] = dict(
      make_step=parle_step,
      tx=entropy_optax.parle(LEARNING_RATE, n_replicas=N_REPLICAS, rho=RHO, **KW),
      params=jax.tree.map(np.asarray, entropy_optax.replicate(params, N_REPLICAS)),
      param_sharding=replica_fsdp,
      inputs=[jax.tree.map(lambda a: a[:, i:i + L], batches) for i in range(0, L * OUTER_STEPS, L)],
      input_sharding=NamedSharding(parle_mesh, P("replica", None, "data")))

  # -- every run on the global mesh, in every process -----------------------

  for name, run in runs.items():
    t = time.perf_counter()
    tx = run["tx"]
    # README step 3: the same params in every process, device_put sharded.
    sharded_params = jax.tree.map(lambda p: jax.device_put(p, run["param_sharding"](p)),
                                  run["params"])
    sharded_params, sharded_state = train(
        run["make_step"](tx), sharded_params, tx.init(sharded_params),
        [feed(name, x, run["input_sharding"]) for x in run["inputs"]])
    out = results["runs"][name] = {
        "param_specs": {k: spec_entries(v.sharding.spec) for k, v in sharded_params.items()},
        "sharded": dump(gathered((sharded_params, sharded_state))),
        "initial_params": dump(run["params"]),
    }
    if name == "parle":
      out["sharded_reference"] = dump(gathered(entropy_optax.reference_params(sharded_state)))
    timings[name + "_sharded_s"] = time.perf_counter() - t

  # -- the single-device references, shared out between the processes ------

  # Compiling dominates the runtime: each process computes only some of the
  # references (they do not depend on the process), which the test collects.
  owners = {"fused": 0, "interleaved": 0, "parle": 1 % jax.process_count()}
  for name, run in runs.items():
    if owners[name] != jax.process_index():
      continue
    t = time.perf_counter()
    tx = run["tx"]
    single_params = on_one_device(run["params"])
    single = train(run["make_step"](tx), single_params, tx.init(single_params),
                   [on_one_device(x) for x in run["inputs"]])
    out = results["runs"][name]
    out["single"] = dump(single)
    if name == "parle":
      out["single_reference"] = dump(entropy_optax.reference_params(single[1]))
    timings[name + "_single_s"] = time.perf_counter() - t

  results["not_global_leaves"] = not_global
  results["shares"] = {run: {"local_elements": fed, "global_elements": total}
                       for run, (fed, total) in shares.items()}
  timings["total_s"] = time.perf_counter() - t0
  results["timings"] = timings
  with open(args.out, "w") as f:
    json.dump(results, f)
  multihost_utils.sync_global_devices("multihost_worker done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
