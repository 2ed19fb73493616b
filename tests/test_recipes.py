"""entropy_optax.recipes: each recipe's hyperparameters, as documented."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from entropy_optax import recipes


def test_lua_learning_rate_and_scope_follow_the_papers_table():
  spe = 10
  for task, expected in [
      ("mnistfc", {0: 1.0, 2 * spe - 1: 1.0, 2 * spe: 0.1, 9 * spe: 0.1}),
      ("lenet", {0: 1.0, 2 * spe: 0.1, 7 * spe - 1: 0.1, 7 * spe: 0.01}),
      ("allcnn", {0: 1.0, 4 * spe - 1: 1.0, 4 * spe: 0.2, 8 * spe: 0.04}),
  ]:
    for step, lr in expected.items():
      # One outer step with L = 1 and noise 0: the anchor moves by lr * D.
      one = recipes.lua(spe, task=task, inner_steps=1, noise=0.0, inner_momentum=None,
                        gamma=1.0, weight_decay=0.0)
      # ``step`` outer steps with a zero gradient at x = 0 move nothing but the
      # counters (the recipe's own and its schedule's); then gradient 1 at
      # x = 0: x' = -0.1, mu = 0.25 x' = -0.025, D = 0.025, and x moves by -lr D.
      idle = lambda _, state: one.update(jnp.zeros(1), state, jnp.zeros(1))[1]
      state = jax.jit(lambda s: jax.lax.fori_loop(0, step, idle, s))(one.init(jnp.zeros(1)))
      assert int(state.count) == step
      updates, _ = one.update(jnp.ones(1), state, jnp.zeros(1))
      np.testing.assert_allclose(updates, [-lr * 0.025], rtol=1e-5, err_msg=f"{task} @ {step}")


def test_lua_refuses_an_unknown_task_and_a_non_int_epoch_length():
  mnistfc = recipes.lua(10, task="mnistfc")
  allcnn = recipes.lua(10, task="allcnn")
  assert mnistfc is not None and allcnn is not None
  with pytest.raises(ValueError, match="task"):
    recipes.lua(10, task="resnet")
  with pytest.raises(TypeError, match="steps_per_epoch"):
    recipes.lua(10.0)


def test_bocconi_gamma_grows_from_gamma0_to_gamma_final_over_the_run():
  schedule = recipes.bocconi_gamma(200, gamma0=0.5, gamma_final=8.0)
  np.testing.assert_allclose([schedule(0), schedule(100), schedule(200)], [0.5, 2.0, 8.0],
                             rtol=1e-5)
  with pytest.raises(ValueError, match="gamma_final"):
    recipes.bocconi_gamma(200, gamma0=0.5, gamma_final=0.1)


@pytest.mark.parametrize("make", [
    lambda: recipes.lua(5, task="mnistfc", inner_steps=4),
    lambda: recipes.pytorch(inner_steps=4),
    lambda: recipes.bocconi(50, inner_steps=4),
])
def test_each_recipe_trains_a_least_squares_problem(make):
  tx = make()
  key = jax.random.key(0)
  x = jax.random.normal(key, (4 * 20, 32, 5))
  w_true = jnp.arange(5.0) / 5
  data = {"x": x, "y": x @ w_true}
  loss = lambda p, b: jnp.mean((b["x"] @ p - b["y"]) ** 2)
  step = entropy_optax.make_train_step(loss, tx)
  params, state = jnp.zeros(5), tx.init(jnp.zeros(5))
  first = float(loss(params, jax.tree.map(lambda a: a[0], data)))
  for t in range(20):
    params, state, metrics = step(params, state, jax.tree.map(lambda a: a[4 * t:4 * t + 4], data))
  assert int(metrics["skipped"]) == 0
  assert float(loss(params, jax.tree.map(lambda a: a[0], data))) < 0.1 * first
