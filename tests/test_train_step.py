"""make_train_step: one jitted call per outer step, with BatchNorm, dropout, aux and donation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
import harness

L = 4


class BatchNormDropoutNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x)))
    return nn.Dense(3)(nn.Dropout(0.5, deterministic=not train)(x))


def _problem():
  net = BatchNormDropoutNet()
  rng = np.random.default_rng(0)
  batches = {
      "x": jnp.asarray(rng.normal(size=(L, 16, 4)), jnp.float32),
      "y": jnp.asarray(rng.integers(0, 3, size=(L, 16))),
  }
  variables = net.init(jax.random.key(0), batches["x"][0], train=False)

  def loss_fn(params, batch_stats, batch, *, key):
    logits, mutated = net.apply(
        {"params": params, "batch_stats": batch_stats}, batch["x"], train=True,
        rngs={"dropout": key}, mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
    return loss, (mutated["batch_stats"], accuracy)

  return variables["params"], variables["batch_stats"], batches, loss_fn


def _by_hand(tx, params, batch_stats, batches, loss_fn, key):
  """Step-interleaved, one minibatch at a time, the i-th dropout key for minibatch i."""
  keys = jax.random.split(key, L)

  @jax.jit
  def one_step(params, batch_stats, state, batch, key):
    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch, key=key)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), batch_stats, state, loss, accuracy

  state, losses, accuracies = tx.init(params), [], []
  for i in range(L):
    params, batch_stats, state, loss, accuracy = one_step(
        params, batch_stats, state, harness.take(batches, i), keys[i])
    losses.append(loss)
    accuracies.append(accuracy)
  return params, batch_stats, np.mean(losses), np.mean(accuracies)


def _assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_train_step_runs_one_fused_outer_step_with_batchnorm_dropout_and_aux():
  params, stats, batches, loss_fn = _problem()
  key = jax.random.key(5)
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=L, noise=1e-3, gamma=0.1, inner_momentum=0.9)
  step = entropy_optax.make_train_step(loss_fn, tx, has_aux=True, has_state=True, donate=False)
  new_params, state, metrics, new_stats = step(params, tx.init(params), batches, stats, key)

  want_params, want_stats, want_loss, want_accuracy = _by_hand(
      tx, params, stats, batches, loss_fn, key)
  _assert_trees_close(new_params, want_params)
  _assert_trees_close(new_stats, want_stats)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["aux"], want_accuracy, rtol=1e-5)
  assert int(state.count) == 1 and int(state.inner_count) == 0
  assert state.carry is None  # the carry slot is left as it came in


def test_train_step_with_a_plain_optax_transform_takes_one_step_per_minibatch():
  params, stats, batches, loss_fn = _problem()
  key = jax.random.key(5)
  tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
  step = entropy_optax.make_train_step(loss_fn, tx, has_aux=True, has_state=True, donate=False)
  new_params, _, metrics, new_stats = step(params, tx.init(params), batches, stats, key)
  want_params, want_stats, want_loss, _ = _by_hand(tx, params, stats, batches, loss_fn, key)
  _assert_trees_close(new_params, want_params)
  _assert_trees_close(new_stats, want_stats)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)


def test_train_step_donates_its_buffers_and_compiles_once():
  params, stats, batches, loss_fn = _problem()
  traces = []

  def counted_loss(*args, **kwargs):
    traces.append(1)
    return loss_fn(*args, **kwargs)

  tx = entropy_optax.entropy_sgd(0.5, inner_steps=L)
  step = entropy_optax.make_train_step(counted_loss, tx, has_aux=True, has_state=True)
  opt_state = tx.init(params)
  traced = []
  for t in range(3):
    old_params = params
    params, opt_state, metrics, stats = step(params, opt_state, batches, stats,
                                             jax.random.key(t))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))
    traced.append(len(traces))
  assert traced[0] == traced[1] == traced[2] > 0
  assert int(opt_state.count) == 3 and np.isfinite(metrics["loss"])


def test_train_step_without_state_or_key_takes_the_plain_loss():
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L, noise=0.0, gamma=0.1)
  loss = lambda p, batch: jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
  batches = {"x": jnp.ones((L, 8, 3)), "y": jnp.ones((L, 8))}
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  params, _, metrics = step(jnp.zeros(3), tx.init(jnp.zeros(3)), batches)
  expected, _ = harness.run_fused(tx, jnp.zeros(3), batches, L, loss=loss)
  np.testing.assert_allclose(params, expected, rtol=1e-6)
  assert set(metrics) == {"loss", "skipped"} and int(metrics["skipped"]) == 0
