"""Fused and step-interleaved modes compute the same outer steps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import harness
import reference


def _mlp_problem(n):
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.init_mlp())
  batches = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.make_batches(n))
  return params, batches


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.5),
        dict(learning_rate=0.5, momentum=0.9, inner_momentum=0.9, weight_decay=1e-3,
             gamma=entropy_optax.scoping(0.03, 0.1)),
        dict(learning_rate=0.5, inner_steps=1),
    ],
    ids=["plain", "all_knobs", "L1"],
)
def test_fused_equals_interleaved_with_noise_on(kwargs):
  kwargs = dict(dict(inner_steps=5, noise=1e-2, key=7), **kwargs)
  inner_steps = kwargs["inner_steps"]
  params, batches = _mlp_problem(3 * inner_steps)
  tx = entropy_optax.entropy_sgd(**kwargs)
  a, state_a = harness.run_interleaved(tx, params, batches)
  b, state_b = harness.run_fused(tx, params, batches, inner_steps)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(leaf_a, leaf_b, rtol=2e-5, atol=2e-6)
  assert int(state_a.count) == int(state_b.count) == 3
  assert int(state_a.inner_count) == int(state_b.inner_count) == 0
  # Noise matters here: a different key moves the result well past that tolerance.
  c, _ = harness.run_fused(
      entropy_optax.entropy_sgd(**dict(kwargs, key=8)), params, batches, inner_steps
  )
  assert not np.allclose(a["w1"], c["w1"], rtol=2e-5, atol=2e-6)


def test_interleaved_params_are_the_walker_and_anchor_lives_in_the_state():
  params, batches = _mlp_problem(3)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=3, noise=0.0)
  walker, state = harness.run_interleaved(tx, params, batches, calls=2)
  assert int(state.inner_count) == 2
  assert not np.allclose(walker["w1"], params["w1"])
  np.testing.assert_array_equal(entropy_optax.anchor_params(state)["w1"], params["w1"])


def test_entropy_adam_fused_equals_interleaved():
  params, batches = _mlp_problem(8)
  tx = entropy_optax.entropy_adam(1e-2, inner_steps=4, noise=1e-3)
  a, _ = harness.run_interleaved(tx, params, batches)
  b, _ = harness.run_fused(tx, params, batches, 4)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(leaf_a, leaf_b, rtol=2e-5, atol=2e-6)


def test_inner_transform_acts_on_every_langevin_gradient_in_fused_mode():
  """Clipping through ``inner=`` matches a chain in front in interleaved mode."""
  params, batches = _mlp_problem(8)
  batches = dict(batches, y=100.0 * batches["y"])  # large gradients to clip
  common = dict(inner_steps=4, noise=0.0, gamma=0.1)
  fused_tx = entropy_optax.entropy_sgd(0.5, inner=optax.clip_by_global_norm(0.1), **common)
  chained_tx = optax.chain(optax.clip_by_global_norm(0.1), entropy_optax.entropy_sgd(0.5, **common))
  a, _ = harness.run_fused(fused_tx, params, batches, 4)
  b, _ = harness.run_interleaved(chained_tx, params, batches)
  unclipped, _ = harness.run_fused(entropy_optax.entropy_sgd(0.5, **common), params, batches, 4)
  np.testing.assert_allclose(a["w1"], b["w1"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(a["w1"], unclipped["w1"], rtol=1e-3)


class BatchNormDropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)
    return nn.Dense(3)(x)


def _bn_problem(inner_steps):
  model = BatchNormDropoutNet()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(inner_steps, 16, 4)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=(inner_steps, 16)))
  keys = jax.random.split(jax.random.key(1), inner_steps)
  variables = model.init(jax.random.key(0), x[0], train=False)
  batches = {"x": x, "y": y, "dropout": jax.random.key_data(keys)}

  def loss(params, batch_stats, batch):
    logits, mutated = model.apply(
        {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
        rngs={"dropout": jax.random.wrap_key_data(batch["dropout"])},
        mutable=["batch_stats"],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return ce, mutated["batch_stats"]

  def grad_fn(params, batch, batch_stats):
    """The fused-mode contract with a carry: (walker, batch, carry) -> (grads, carry)."""
    return jax.grad(loss, has_aux=True)(params, batch_stats, batch)

  return variables["params"], variables["batch_stats"], batches, grad_fn


def test_fused_mode_threads_batchnorm_statistics_and_dropout_keys_through_grad_fn():
  inner_steps = 4
  params, stats0, batches, grad_fn = _bn_problem(inner_steps)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps, noise=1e-3, gamma=0.1)

  # Fused: the first gradient outside, the carry (BatchNorm stats) threaded inside.
  state = tx.init(params)
  grads, stats = grad_fn(params, harness.take(batches, 0), stats0)
  rest = jax.tree.map(lambda a: a[1:], batches)
  updates, state = jax.jit(
      lambda g, s, p, c: tx.update(g, s, p, grad_fn=grad_fn, batches=rest, carry=c)
  )(grads, state, params, stats)
  fused_params = optax.apply_updates(params, updates)
  fused_stats = entropy_optax.find_state(state).carry

  # Interleaved: the user threads the statistics by hand.
  p, s, st = params, tx.init(params), stats0
  for i in range(inner_steps):
    g, st = grad_fn(p, harness.take(batches, i), st)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)

  for a, b in zip(jax.tree.leaves(fused_params), jax.tree.leaves(p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b, c in zip(jax.tree.leaves(fused_stats), jax.tree.leaves(st), jax.tree.leaves(stats0)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, c)
  assert int(state.count) == 1


def test_fused_mode_with_carry_compiles_once_when_the_state_is_seeded():
  """Seeding the carry slot keeps the state's structure fixed across calls."""
  inner_steps = 3
  params, stats0, batches, grad_fn = _bn_problem(inner_steps)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps)
  state = entropy_optax.replace_carry(tx.init(params), stats0)
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    stats = entropy_optax.find_state(state).carry
    grads, stats = grad_fn(params, harness.take(batches, 0), stats)
    rest = jax.tree.map(lambda a: a[1:], batches)
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn, batches=rest, carry=stats)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1
  assert int(state.count) == 3


@pytest.mark.parametrize("abandon", [False, True], ids=["trained", "abandoned"])
def test_fused_mode_reads_only_params_not_the_states_walker_buffers(abandon):
  """A fused step restarts the walker at params (its anchor), mu at params and
  the momentum at zero: it reuses the buffers of state.anchor, state.mu and
  state.momentum for its inner loop but never reads the values of mu and the
  momentum (the anchor's only to check that params are on it), and it leaves
  the invariant of an outer step's start (mu = anchor, momentum = 0)."""
  params, batches = _mlp_problem(4)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=4, momentum=0.9, inner_momentum=0.9,
                                 noise=1e-2, key=3)
  grad_fn = jax.grad(harness.mlp_loss)
  if abandon:  # a NaN gradient on the third minibatch abandons the outer step
    batches = jax.tree.map(lambda a: a.at[2].multiply(jnp.nan), batches)

  @jax.jit
  def step(params, state):
    rest = jax.tree.map(lambda a: a[1:], batches)
    first = jax.tree.map(lambda a: a[0], batches)
    return tx.update(grad_fn(params, first), state, params, grad_fn=grad_fn, batches=rest)

  clean = tx.init(params)
  poison = lambda tree: jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), tree)
  dirty = clean._replace(mu=poison(clean.mu), momentum=poison(clean.momentum))
  # One compiled program, inputs that differ only in values it must not read:
  # bit for bit.
  (u_clean, s_clean), (u_dirty, s_dirty) = step(params, clean), step(params, dirty)
  for a, b in zip(jax.tree.leaves((u_clean, s_clean)), jax.tree.leaves((u_dirty, s_dirty))):
    np.testing.assert_array_equal(a, b)
  new_params = optax.apply_updates(params, u_clean)
  assert int(s_clean.skipped) == int(abandon)
  for anchor, mu, m in zip(*map(jax.tree.leaves, (s_clean.anchor, s_clean.mu, s_clean.momentum))):
    np.testing.assert_array_equal(mu, anchor)  # the same value, stored twice
    np.testing.assert_array_equal(m, np.zeros_like(m))
    assert not np.signbit(m).any()
  # The anchor is params + updates inside the step, new_params the same sum
  # here, eagerly: another program, where XLA may fuse the update's multiply
  # into that add (an FMA) or not, which moves the sum by at most an ulp
  # (measured: 0 here, also against the step run op by op). Allowed: 2.
  harness.assert_close_ulp(s_clean.anchor, new_params, ulps=2)
  if abandon:  # zero updates: params + 0 is params, and the anchor is params
    for p, q, anchor in zip(*map(jax.tree.leaves, (new_params, params, s_clean.anchor))):
      np.testing.assert_array_equal(p, q)
      np.testing.assert_array_equal(anchor, q)


def test_unroll_computes_what_the_loop_computes():
  """``unroll`` only changes how XLA compiles the fused scan (and the plain
  optax path of make_train_step): the same numbers, to float rounding.

  Entropy-SGD's runs in float64, where rounding cannot hide a difference of
  computation: in float32 the two programs contract other products into
  FMAs, and over 16 noisy Langevin steps that moved an element of size 2e-3
  by 1.1e-7 (an ulp of the step's intermediates of size 1).
  """
  params, batches = _mlp_problem(8)
  kwargs = dict(inner_steps=4, noise=1e-2, momentum=0.9, inner_momentum=0.9, key=5)
  with jax.enable_x64(True):
    params64, batches64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (params, batches))
    rolled, s_rolled = harness.run_fused(
        entropy_optax.entropy_sgd(0.5, **kwargs), params64, batches64, 4)
    unrolled, s_unrolled = harness.run_fused(
        entropy_optax.entropy_sgd(0.5, unroll=True, **kwargs), params64, batches64, 4)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(rolled))
    for a, b in zip(jax.tree.leaves((rolled, s_rolled)), jax.tree.leaves((unrolled, s_unrolled))):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
  loss = lambda p, batch: harness.mlp_loss(p, batch)
  tx = optax.sgd(0.1, momentum=0.9)
  results = []
  for unroll in (False, True):
    step = entropy_optax.make_train_step(loss, tx, donate=False, unroll=unroll)
    results.append(step(params, tx.init(params), batches)[0])
  for a, b in zip(*map(jax.tree.leaves, results)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("unroll", [0, -1, 1.5, "yes", None])
def test_bad_unroll_is_rejected_by_name(unroll):
  with pytest.raises((TypeError, ValueError), match="unroll"):
    entropy_optax.entropy_sgd(0.1, unroll=unroll)
  with pytest.raises((TypeError, ValueError), match="unroll"):
    entropy_optax.make_train_step(harness.mlp_loss, optax.sgd(0.1), unroll=unroll)


def test_unroll_passes_through_inject_hyperparams():
  """A bool is not injected; an int must be a static arg, and says so."""
  params, batches = _mlp_problem(4)
  for kwargs in (dict(unroll=True), dict(unroll=3, static_args=("inner_steps", "unroll"))):
    static = kwargs.pop("static_args", ("inner_steps",))
    tx = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=static)(
        0.5, inner_steps=4, noise=1e-2, **kwargs)
    out, _ = harness.run_fused(tx, params, batches, 4)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(out))
  tx = optax.inject_hyperparams(entropy_optax.entropy_sgd, static_args=("inner_steps",))(
      0.5, inner_steps=4, unroll=3)
  with pytest.raises(TypeError, match="static_args=\\('unroll',\\)"):
    harness.run_fused(tx, params, batches, 4)


@pytest.mark.parametrize("inner_steps", [2, 4])
def test_default_keeps_the_inner_loop_and_unroll_true_removes_it(inner_steps):
  params, batches = _mlp_problem(inner_steps)
  grad_fn = jax.grad(harness.mlp_loss)

  def whiles(**kwargs):
    tx = entropy_optax.entropy_sgd(0.5, inner_steps=inner_steps, noise=0.0, **kwargs)

    def step(params, state):
      rest = jax.tree.map(lambda a: a[1:], batches)
      first = jax.tree.map(lambda a: a[0], batches)
      return tx.update(grad_fn(params, first), state, params, grad_fn=grad_fn, batches=rest)

    return jax.jit(step).lower(params, tx.init(params)).as_text().count("stablehlo.while")

  assert whiles() == whiles(unroll=1) == whiles(unroll=True) + 1


def test_a_donated_fused_step_runs_in_place_beside_an_sgd_step():
  """The donated fused step's temporaries stay within half the params of an
  optax SGD step's: the inner loop runs in the state's buffers. (A check that
  read the anchor's buffer before the loop once cost a whole copy of it:
  2.13x the params against 1.27x; a compile-time measure, not a timing.)"""
  sizes = [(784, 512), (512, 512), (512, 10)]
  keys = jax.random.split(jax.random.key(0), len(sizes))
  params = [{"w": jax.random.normal(k, s) / np.sqrt(s[0]), "b": jnp.zeros(s[1])}
            for k, s in zip(keys, sizes)]

  def loss(params, batch):
    h = batch["x"]
    for layer in params[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  inner_steps = 5
  batches = {"x": jax.random.normal(jax.random.key(1), (inner_steps, 64, 784)),
             "y": jnp.arange(inner_steps * 64).reshape(inner_steps, 64) % 10}
  pick = lambda k: jax.tree.map(lambda a: a[k], batches)
  grad_fn = jax.grad(loss)
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))

  def temporaries(tx, run):
    compiled = jax.jit(run, donate_argnums=(0, 1)).lower(params, tx.init(params)).compile()
    return compiled.memory_analysis().temp_size_in_bytes / param_bytes

  sgd = optax.sgd(0.1, momentum=0.9)

  def sgd_run(p, s):
    def body(carry, k):
      p, s = carry
      updates, s = sgd.update(grad_fn(p, pick(k)), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(body, (p, s), jnp.arange(inner_steps))[0]

  tx = entropy_optax.entropy_sgd(1.0, inner_steps=inner_steps, inner_momentum=0.9,
                                 momentum=0.9)

  def fused_run(p, s):
    updates, s = tx.update(grad_fn(p, pick(0)), s, p, grad_fn=lambda w, k: grad_fn(w, pick(k)),
                           batches=jnp.arange(1, inner_steps))
    return optax.apply_updates(p, updates), s

  assert temporaries(tx, fused_run) <= temporaries(sgd, sgd_run) + 0.5
