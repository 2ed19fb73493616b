"""Flax NNX and Linen run Entropy-SGD in both modes, and evaluate the anchor."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.training import train_state
import pytest

import entropy_optax
import entropy_optax.flax
import harness
import reference

L = 3


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _batches(n):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), reference.make_batches(n))


class Mlp(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(3, 5, rngs=rngs)
    self.out = nnx.Linear(5, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


def _mlp_loss(model, batch):
  return 0.5 * jnp.mean(jnp.sum((model(batch["x"]) - batch["y"]) ** 2, -1))


def _functional(model):
  """(params, loss) of the same network as plain pytrees, for the harness."""
  graphdef, params = nnx.split(model, nnx.Param)
  return nnx.as_pure(params), lambda p, batch: _mlp_loss(nnx.merge(graphdef, p), batch)


def _tx():
  return entropy_optax.entropy_sgd(0.5, inner_steps=L, noise=1e-3, key=3, inner_momentum=0.9)


def test_nnx_optimizer_runs_step_interleaved_mode_and_at_anchor_swaps_the_anchor_in_and_out():
  model = Mlp(nnx.Rngs(0))
  params, loss = _functional(model)
  batches = _batches(2 * L - 1)  # ends one step before an outer step: walker != anchor
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    optimizer.update(model, nnx.grad(_mlp_loss)(model, batch))

  for i in range(2 * L - 1):
    step(model, optimizer, harness.take(batches, i))
  walker, state = harness.run_interleaved(_tx(), params, batches, loss=loss)
  anchor = entropy_optax.anchor_params(state)
  _assert_trees_close(nnx.as_pure(nnx.state(model, nnx.Param)), walker)
  with entropy_optax.flax.nnx_at_anchor(model, optimizer) as evaluated:
    _assert_trees_close(nnx.as_pure(nnx.state(evaluated, nnx.Param)), anchor)
  _assert_trees_close(nnx.as_pure(nnx.state(model, nnx.Param)), walker)
  assert not np.allclose(walker["out"]["kernel"], anchor["out"]["kernel"])


def test_nnx_optimizer_runs_fused_mode_through_update_with_nnx_grad_fn():
  model = Mlp(nnx.Rngs(0))
  params, loss = _functional(model)
  batches = _batches(2 * L)
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)

  @nnx.jit
  def outer_step(model, optimizer, chunk):
    first = harness.take(chunk, 0)
    rest = jax.tree.map(lambda a: a[1:], chunk)
    grads = nnx.grad(_mlp_loss)(model, first)
    optimizer.update(
        model, grads, grad_fn=entropy_optax.flax.nnx_grad_fn(model, _mlp_loss), batches=rest
    )

  for t in range(2):
    outer_step(model, optimizer, jax.tree.map(lambda a: a[t * L:(t + 1) * L], batches))
  expected, _ = harness.run_fused(_tx(), params, batches, L, loss=loss)
  _assert_trees_close(nnx.as_pure(nnx.state(model, nnx.Param)), expected)


class BatchNormDropoutNet(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(4, 16, rngs=rngs)
    self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(self.drop(nnx.relu(self.norm(self.dense(x)))))


def _ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits.shape[0]


def test_nnx_fused_update_threads_batchnorm_and_dropout_like_interleaved_steps():
  """Each Langevin step sees the BatchNorm statistics and dropout stream of the one before."""
  rng = np.random.default_rng(0)
  batches = {
      "x": jnp.asarray(rng.normal(size=(L, 16, 4)), jnp.float32),
      "y": jnp.asarray(rng.integers(0, 3, size=(L, 16))),
  }
  tx = entropy_optax.entropy_sgd(0.5, inner_steps=L, noise=1e-3, gamma=0.1)
  fused_model = BatchNormDropoutNet(nnx.Rngs(0, dropout=1))
  fused_opt = nnx.Optimizer(fused_model, tx, wrt=nnx.Param)
  stats0 = jnp.copy(fused_model.norm.mean[...])
  step = nnx.jit(entropy_optax.flax.nnx_fused_update, static_argnames=("loss_fn", "has_aux"))
  metrics = step(fused_model, fused_opt, loss_fn=_ce_loss, batches=batches, has_aux=True)

  model = BatchNormDropoutNet(nnx.Rngs(0, dropout=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def interleaved_step(model, optimizer, batch):
    (loss, _), grads = nnx.value_and_grad(_ce_loss, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return loss

  losses = [interleaved_step(model, optimizer, harness.take(batches, i)) for i in range(L)]

  compared = nnx.Any(nnx.Param, nnx.BatchStat, nnx.RngCount)
  _assert_trees_close(nnx.as_pure(nnx.state(fused_model, compared)),
                      nnx.as_pure(nnx.state(model, compared)), rtol=1e-5, atol=1e-6)
  assert not np.allclose(fused_model.norm.mean[...], stats0)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses), rtol=1e-5)
  np.testing.assert_allclose(metrics["aux"], 16.0)
  assert int(fused_opt.opt_state.count[...]) == 1
  assert entropy_optax.find_state(nnx.as_pure(fused_opt.opt_state)).carry is None
  # The next call compiles nothing new and trains on.
  metrics = step(fused_model, fused_opt, loss_fn=_ce_loss, batches=batches, has_aux=True)
  assert int(fused_opt.opt_state.count[...]) == 2 and np.isfinite(metrics["loss"])


class LinenMlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(jnp.tanh(nn.Dense(5)(x)))


def _linen_problem():
  net = LinenMlp()
  batches = _batches(2 * L)
  params = net.init(jax.random.key(0), batches["x"][0])["params"]

  def loss(p, batch):
    return 0.5 * jnp.mean(jnp.sum((net.apply({"params": p}, batch["x"]) - batch["y"]) ** 2, -1))

  return net, params, batches, loss


def test_linen_train_state_apply_gradients_runs_step_interleaved_mode_and_linen_at_anchor_reads_the_anchor():
  net, params, batches, loss = _linen_problem()
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_tx())
  step = jax.jit(lambda s, batch: s.apply_gradients(grads=jax.grad(loss)(s.params, batch)))
  for i in range(2 * L - 1):
    state = step(state, harness.take(batches, i))
  walker, ref_state = harness.run_interleaved(_tx(), params, batches, loss=loss, calls=2 * L - 1)
  _assert_trees_close(state.params, walker)
  _assert_trees_close(entropy_optax.flax.linen_at_anchor(state).params,
                      entropy_optax.anchor_params(ref_state))


def test_linen_fused_apply_gradients_takes_the_L_minibatches_and_equals_the_fused_transform():
  net, params, batches, loss = _linen_problem()
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_tx())

  @jax.jit
  def outer_step(state, chunk):  # chunk: all L minibatches, as make_train_step takes them
    return entropy_optax.flax.linen_fused_apply_gradients(
        state, grad_fn=jax.grad(loss), batches=chunk)

  for t in range(2):
    state = outer_step(state, jax.tree.map(lambda a: a[t * L:(t + 1) * L], batches))
  expected, _ = harness.run_fused(_tx(), params, batches, L, loss=loss)
  _assert_trees_close(state.params, expected)
  assert int(state.step) == 2


def test_linen_fused_apply_gradients_threads_the_carry_from_the_first_minibatch_on():
  """The carry sees all L minibatches; the final one is stored in the state."""
  net, params, batches, loss = _linen_problem()
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_tx())
  state = state.replace(opt_state=entropy_optax.replace_carry(state.opt_state, jnp.int32(0)))
  counting = lambda p, batch, calls: (jax.grad(loss)(p, batch), calls + 1)
  step = jax.jit(lambda s, chunk: entropy_optax.flax.linen_fused_apply_gradients(
      s, grad_fn=counting, batches=chunk, carry=jnp.int32(0)))
  state = step(state, jax.tree.map(lambda a: a[:L], batches))
  assert int(entropy_optax.find_state(state.opt_state).carry) == L
  expected, _ = harness.run_fused(_tx(), params, batches, L, loss=loss, outer_steps=1)
  _assert_trees_close(state.params, expected)


def test_linen_fused_apply_gradients_names_the_0_3_change_when_given_the_old_form():
  net, params, batches, loss = _linen_problem()
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_tx())
  first, rest = harness.take(batches, 0), jax.tree.map(lambda a: a[1:L], batches)
  with pytest.raises(TypeError, match="takes no grads since entropy_optax 0.3"):
    entropy_optax.flax.linen_fused_apply_gradients(
        state, grads=jax.grad(loss)(params, first), grad_fn=jax.grad(loss), batches=rest)
  # The old form's L - 1 minibatches alone: the count is restated in the new terms.
  with pytest.raises(ValueError, match=f"inner_steps = {L} minibatches, the first included"):
    entropy_optax.flax.linen_fused_apply_gradients(state, grad_fn=jax.grad(loss), batches=rest)
