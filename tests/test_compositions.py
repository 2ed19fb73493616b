"""Entropy-SGD in optax's wrappers, with frozen leaves, resumed: each works or refuses by name.

The findings of issue 24 first, one test each, then the composition matrix
(wrappers x modes) whose outcomes ``docs/compositions.md`` tabulates.
"""

import functools

import harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
import entropy_optax.flax

L = 3
# A refusal raised inside jit reaches the user as a JaxRuntimeError carrying
# the message; outside jit as the ValueError itself.
REFUSED = (ValueError, jax.errors.JaxRuntimeError)


def loss(params, batch):
  return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)


def make_params():
  key_w, key_b = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(key_w, (4, 2)), "b": jax.random.normal(key_b, (2,))}


def make_batches(n, seed=1):
  key_x, key_y = jax.random.split(jax.random.key(seed))
  return {"x": jax.random.normal(key_x, (n, 8, 4)), "y": jax.random.normal(key_y, (n, 8, 2))}


def copy(tree):
  return jax.tree.map(jnp.copy, tree)


@functools.partial(jax.jit, static_argnums=0)
def interleaved_step(tx, params, state, batch):
  """One step-interleaved call, compiled once per transform."""
  updates, state = tx.update(jax.grad(loss)(params, batch), state, params)
  return optax.apply_updates(params, updates), state


def interleaved_calls(tx, params, state, batches, n=None):
  """``n`` jitted step-interleaved calls; returns (params, state)."""
  for i in range(n or jax.tree.leaves(batches)[0].shape[0]):
    params, state = interleaved_step(tx, params, state, harness.take(batches, i))
  return params, state


def assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------ 1. resume, inner_steps


def test_a_state_resumed_with_fewer_inner_steps_than_it_has_taken_ends_its_outer_step():
  params, batches = make_params(), make_batches(12)
  saved = entropy_optax.entropy_sgd(1.0, inner_steps=10, gamma=0.3, noise=0.0)
  walker, state = interleaved_calls(saved, params, saved.init(params), batches, 7)
  resumed = entropy_optax.entropy_sgd(1.0, inner_steps=4, gamma=0.3, noise=0.0)
  rest = jax.tree.map(lambda a: a[7:], batches)
  walker, state = interleaved_calls(resumed, walker, state, rest, 1)
  assert int(state.count) == 1 and int(state.inner_count) == 0
  assert_equal(walker, state.anchor)  # params back on the (new) anchor
  assert not np.allclose(np.asarray(state.anchor["w"]), np.asarray(params["w"]))
  walker, state = interleaved_calls(resumed, walker, state, batches, 4)
  assert int(state.count) == 2  # and from then on outer steps of 4


def test_a_state_resumed_with_more_inner_steps_continues_its_outer_step():
  params, batches = make_params(), make_batches(8)
  saved = entropy_optax.entropy_sgd(1.0, inner_steps=3, noise=0.0)
  walker, state = interleaved_calls(saved, params, saved.init(params), batches, 2)
  resumed = entropy_optax.entropy_sgd(1.0, inner_steps=5, noise=0.0)
  walker, state = interleaved_calls(resumed, walker, state, batches, 2)
  assert (int(state.count), int(state.inner_count)) == (0, 4)
  walker, state = interleaved_calls(resumed, walker, state, batches, 1)
  assert (int(state.count), int(state.inner_count)) == (1, 0)


def test_a_fused_call_on_a_state_mid_outer_step_is_refused_under_jit_and_without():
  params, batches = make_params(), make_batches(L)
  tx = entropy_optax.entropy_sgd(0.0, inner_steps=L)
  walker, state = interleaved_calls(tx, params, tx.init(params), batches, 1)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  with pytest.raises(REFUSED, match="1 Langevin steps into one"):
    jax.block_until_ready(step(walker, state, batches))
  with pytest.raises(REFUSED, match="1 Langevin steps into one"):
    tx.update(jax.grad(loss)(walker, harness.take(batches, 0)), state, walker,
              grad_fn=jax.grad(loss), batches=jax.tree.map(lambda a: a[1:], batches))


@pytest.mark.parametrize("changed", [
    dict(gamma=0.5, langevin_lr=0.05, noise=1e-2, learning_rate=0.5, mu_decay=0.5,
         weight_decay=1e-3, nesterov=False),
    dict(key=7),
])
def test_a_resumed_state_runs_on_with_the_new_transforms_hyperparameters(changed):
  """Rates, scope, noise and decays live in the transform, not the state (the
  noise key is the state's): a resumed run is the run of the new transform."""
  params, batches = make_params(), make_batches(2 * L)
  base = dict(learning_rate=1.0, inner_steps=L, gamma=0.1, noise=1e-3, key=0)
  old = entropy_optax.entropy_sgd(**base)
  new = entropy_optax.entropy_sgd(**{**base, **changed})
  walker, state = interleaved_calls(old, params, old.init(params), batches, 2)
  rest = jax.tree.map(lambda a: a[2:], batches)
  got, _ = interleaved_calls(new, walker, state, rest)
  want, _ = interleaved_calls(old, walker, state, rest)
  if "key" in changed:
    assert_equal(got, want)  # the state's key draws the noise
    return
  assert not np.allclose(np.asarray(got["w"]), np.asarray(want["w"]))  # they took effect


def test_a_resumed_state_with_or_without_an_inner_momentum_buffer_is_refused_by_name():
  params = make_params()
  state = entropy_optax.entropy_sgd(1.0, inner_steps=L, inner_momentum=None).init(params)
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  with pytest.raises(ValueError, match="inner_momentum"):
    tx.update(params, state, params)
  with pytest.raises(ValueError, match="inner_momentum"):
    jax.jit(tx.update)(params, state, params)


def test_a_resumed_state_of_another_outer_transform_is_refused_by_name():
  params = make_params()
  state = entropy_optax.entropy_sgd(1.0, inner_steps=L, momentum=0.9).init(params)
  tx = entropy_optax.entropy_adam(1e-3, inner_steps=L)
  with pytest.raises(ValueError, match="outer"):
    jax.jit(tx.update)(params, state, params)


# ------------------------------------------------ 2. freezing in fused mode


def labels_of(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if "b" in jax.tree_util.keystr(path) else "train", params)


def frozen_mask(params):
  return jax.tree.map(lambda label: label == "frozen", labels_of(params))


def trainable_mask(params):
  return jax.tree.map(lambda label: label == "train", labels_of(params))


def freezing(tx, how):
  if how == "multi_transform":
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels_of)
  return optax.chain(optax.masked(tx, trainable_mask),
                     optax.masked(optax.set_to_zero(), frozen_mask))


def reference_with_b_constant(params, batches, n, tx=None):
  """Entropy-SGD (``tx``) on w alone, b closed over: what freezing b must give."""
  tx = tx or entropy_optax.entropy_sgd(1.0, inner_steps=L, gamma=0.1, noise=1e-3)
  only_w = lambda p, batch: loss({"w": p["w"], "b": params["b"]}, batch)

  @jax.jit
  def step(p, state, batch):
    updates, state = tx.update(jax.grad(only_w)(p, batch), state, p)
    return optax.apply_updates(p, updates), state

  p, state = {"w": params["w"]}, tx.init({"w": params["w"]})
  for i in range(n):
    p, state = step(p, state, harness.take(batches, i))
  return p["w"]


@pytest.mark.parametrize("how", ["multi_transform", "masked"])
def test_freezing_in_fused_mode_shows_grad_fn_the_full_params_and_keeps_frozen_leaves(how):
  params, batches = make_params(), make_batches(2 * L)
  tx = freezing(entropy_optax.entropy_sgd(1.0, inner_steps=L, gamma=0.1, noise=1e-3), how)
  seen = []

  def grad_fn(p, batch):
    seen.append(sorted(p))  # traced once: the structure grad_fn is called with
    return jax.grad(loss)(p, batch)

  @jax.jit
  def fused(p, state, chunk):
    updates, state = tx.update(
        jax.grad(loss)(p, harness.take(chunk, 0)), state, p, grad_fn=grad_fn,
        batches=jax.tree.map(lambda a: a[1:], chunk), full_params=p)
    return optax.apply_updates(p, updates), state

  p, state = params, tx.init(params)
  for t in range(2):
    p, state = fused(p, state, m_chunk(batches, t, L))
  assert seen and all(names == ["b", "w"] for names in seen)
  assert_equal(p["b"], params["b"])
  interleaved, _ = interleaved_calls(tx, params, tx.init(params), batches)
  harness.assert_close_ulp(p, interleaved, ulps=16)
  harness.assert_close_ulp(p["w"], reference_with_b_constant(params, batches, 2 * L), ulps=16)

  step = entropy_optax.make_train_step(loss, tx, donate=False)
  q, state = params, tx.init(params)
  for t in range(2):
    q, state, _ = step(q, state, m_chunk(batches, t, L))
  assert_equal(q["b"], params["b"])
  harness.assert_close_ulp(q, interleaved, ulps=16)


# ------------------------------------------------ 4. transforms chained after


@pytest.mark.parametrize("after", [
    lambda: optax.scale(0.5), lambda: optax.clip_by_global_norm(1e-3),
])
def test_a_transform_chained_after_entropy_sgd_is_refused_in_both_modes(after):
  params, batches = make_params(), make_batches(2 * L)
  tx = optax.chain(entropy_optax.entropy_sgd(1.0, inner_steps=L), after())
  with pytest.raises(REFUSED, match="after Entropy-SGD"):
    jax.block_until_ready(interleaved_calls(tx, params, tx.init(params), batches))
  with pytest.raises(REFUSED, match="after Entropy-SGD"):
    jax.block_until_ready(harness.run_fused(tx, params, batches, L, loss=loss))
  with jax.disable_jit(), pytest.raises(ValueError, match="after Entropy-SGD"):
    interleaved_calls(tx, params, tx.init(params), batches)  # eager: the ValueError itself


def test_a_transform_chained_before_entropy_sgd_in_fused_mode_is_refused_naming_inner():
  params, batches = make_params(), make_batches(L)
  tx = optax.chain(optax.clip_by_global_norm(1.0), entropy_optax.entropy_sgd(1.0, inner_steps=L))
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  with pytest.raises(ValueError, match="inner="):
    step(params, tx.init(params), batches)


# ------------------------------------------------ 5. apply_if_finite


def test_apply_if_finite_with_make_train_step_trains_and_marks_a_rejected_step():
  params, batches = make_params(), make_batches(2 * L)
  tx = optax.apply_if_finite(entropy_optax.entropy_sgd(1.0, inner_steps=L), 3)
  plain = entropy_optax.entropy_sgd(1.0, inner_steps=L)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  plain_step = entropy_optax.make_train_step(loss, plain, donate=False)
  chunk = jax.tree.map(lambda a: a[:L], batches)
  got, state, metrics = step(params, tx.init(params), chunk)
  want, _, want_metrics = plain_step(params, plain.init(params), chunk)
  harness.assert_close_ulp(got, want, ulps=4)
  assert int(metrics["skipped"]) == 0
  np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-6)
  poisoned = jax.tree.map(lambda a: a[L:], batches)
  poisoned["x"] = poisoned["x"].at[0].set(jnp.nan)  # the first gradient: rejected by optax
  again, state, metrics = step(got, state, poisoned)
  assert_equal(again, got)
  assert int(metrics["skipped"]) == 1 and np.isnan(float(metrics["loss"]))
  assert int(state.notfinite_count) == 1


# ------------------------------------------------ 6. the loss of an abandoned outer step


def test_the_loss_of_an_abandoned_outer_step_is_nan():
  params = make_params()
  tx = entropy_optax.entropy_sgd(1.0, inner_steps=4)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  batches = make_batches(4)
  batches["x"] = batches["x"].at[2].set(jnp.nan)
  _, _, metrics = step(params, tx.init(params), batches)
  assert int(metrics["skipped"]) == 1 and np.isnan(float(metrics["loss"]))


# ------------------------------------------------ 7. inject_hyperparams with no static_args


@pytest.mark.parametrize("mode", ["interleaved", "fused"])
def test_inject_hyperparams_needs_no_static_args_and_matches_the_plain_transform(mode):
  params, batches = make_params(), make_batches(2 * L)
  injected = optax.inject_hyperparams(entropy_optax.entropy_sgd)(learning_rate=0.5, inner_steps=L)
  plain = entropy_optax.entropy_sgd(0.5, inner_steps=L)
  if mode == "interleaved":
    got, state = interleaved_calls(injected, params, injected.init(params), batches)
    want, _ = interleaved_calls(plain, params, plain.init(params), batches)
  else:
    got, state = harness.run_fused(injected, params, batches, L, loss=loss)
    want, _ = harness.run_fused(plain, params, batches, L, loss=loss)
  harness.assert_close_ulp(got, want, ulps=4)
  assert int(state.hyperparams["inner_steps"]) == L
  assert int(entropy_optax.find_state(state).count) == 2


def test_inject_hyperparams_with_the_default_inner_steps_takes_outer_steps_of_20():
  params = make_params()
  tx = optax.inject_hyperparams(entropy_optax.entropy_sgd)(learning_rate=0.5)
  _, state = interleaved_calls(tx, params, tx.init(params), make_batches(21))
  assert (int(entropy_optax.find_state(state).count),
          int(entropy_optax.find_state(state).inner_count)) == (1, 1)


# ------------------------------------------------ 8. parle with make_train_step


def test_parle_with_make_train_step_is_refused_naming_the_fused_update():
  tx = entropy_optax.parle(1.0, n_replicas=2, rho=0.1, inner_steps=L)
  params = entropy_optax.replicate(make_params(), 2)
  step = entropy_optax.make_train_step(loss, tx, donate=False)
  with pytest.raises(ValueError, match="parle.*grad_fn"):
    step(params, tx.init(params), make_batches(L))


# ------------------------------------------------ the composition matrix
#
# Every optax wrapper against every way to run Entropy-SGD. A cell either
# works, checked against what it should give, or is refused with an error
# that names the cause; ``docs/compositions.md`` is this table, rendered.

MODES = ("step-interleaved", "fused update", "make_train_step", "NNX helper")
WORKS, REFUSED_BY_NAME = "works", "refused"
M_L, M_GAMMA, M_NOISE = 2, 0.1, 1e-3


def m_entropy_sgd(**kwargs):
  return entropy_optax.entropy_sgd(1.0, **{"inner_steps": M_L, "gamma": M_GAMMA,
                                           "noise": M_NOISE, **kwargs})


def m_labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if getattr(path[0], "key", None) == "b" else "train", params)


def m_mask(label):
  return lambda params: jax.tree.map(lambda x: x == label, m_labels(params))


class Cell:
  """What a wrapper gives in one mode: ``kind`` works or refused; ``detail``
  goes into the docs table; ``match`` is a regex the refusal must match."""

  def __init__(self, kind, detail="", match=None):
    self.kind, self.detail, self.match = kind, detail, match


W = Cell(WORKS)


def refused(match, detail=""):
  return Cell(REFUSED_BY_NAME, detail, match)


AFTER = refused("after Entropy-SGD", "at the next outer step, the params being off the anchor")
# name: (builder of the wrapped transform, {mode: Cell}, what it is, how it is checked)
MATRIX = {
    "plain": (
        lambda: m_entropy_sgd(),
        dict.fromkeys(MODES, W),
        "`entropy_sgd(...)` alone",
        "the same anchor in every mode"),
    "chain before": (
        lambda: optax.chain(optax.clip_by_global_norm(0.05), m_entropy_sgd()),
        {"step-interleaved": W,
         "fused update": Cell(WORKS, "transforms the first gradient only, as documented: pass it "
                                     "as `inner=`"),
         "make_train_step": refused("inner=", "it would see the first gradient only; pass it "
                                              "as `inner=`"),
         "NNX helper": refused("inner=", "as by `make_train_step`")},
        "`optax.chain(clip_by_global_norm(...), entropy_sgd(...))`",
        "step-interleaved: `entropy_sgd(..., inner=clip)`; fused update: the first gradient "
        "clipped by hand"),
    "chain after": (
        lambda: optax.chain(m_entropy_sgd(), optax.scale(0.5)),
        dict.fromkeys(MODES, AFTER),
        "`optax.chain(entropy_sgd(...), scale(0.5))`",
        "the refusal"),
    "multi_transform": (
        lambda: optax.multi_transform({"train": m_entropy_sgd(), "frozen": optax.set_to_zero()},
                                      m_labels),
        {"step-interleaved": W, "fused update": Cell(WORKS, "pass `full_params=params`"),
         "make_train_step": W, "NNX helper": W},
        "`optax.multi_transform({..: entropy_sgd(...), ..: set_to_zero()}, labels)` (freezing)",
        "frozen leaves unchanged bit for bit; the others as Entropy-SGD on them alone"),
    "masked": (
        lambda: optax.chain(optax.masked(m_entropy_sgd(), m_mask("train")),
                            optax.masked(optax.set_to_zero(), m_mask("frozen"))),
        {"step-interleaved": W, "fused update": Cell(WORKS, "pass `full_params=params`"),
         "make_train_step": W, "NNX helper": W},
        "`optax.masked(entropy_sgd(...), mask)` (chained with `masked(set_to_zero(), ~mask)` "
        "to freeze the rest)",
        "as `multi_transform`"),
    "apply_if_finite": (
        lambda: optax.apply_if_finite(m_entropy_sgd(), 3),
        dict.fromkeys(MODES, W),
        "`optax.apply_if_finite(entropy_sgd(...), n)`",
        "the anchor of the plain transform (a rejected step: `skipped` 1, loss NaN)"),
    "MultiSteps": (
        lambda: optax.MultiSteps(m_entropy_sgd(), every_k_schedule=2),
        {"step-interleaved": W,
         "fused update": Cell(WORKS, "one outer step per k calls, the other calls' inner loops "
                                     "thrown away: cannot be refused here, use "
                                     "`make_train_step`, which refuses it"),
         "make_train_step": refused("MultiSteps", "it would throw minibatches away"),
         "NNX helper": refused("MultiSteps", "as by `make_train_step`")},
        "`optax.MultiSteps(entropy_sgd(...), k)`",
        "step-interleaved: Langevin steps on the mean gradient of k minibatches; fused: one "
        "outer step per k calls"),
    "inject_hyperparams": (
        lambda: optax.inject_hyperparams(entropy_optax.entropy_sgd)(
            learning_rate=1.0, inner_steps=M_L, gamma=M_GAMMA, noise=M_NOISE),
        dict.fromkeys(MODES, W),
        "`optax.inject_hyperparams(entropy_sgd)(...)`, no `static_args`",
        "the anchor of the plain transform. A schedule under it counts update calls: in "
        "step-interleaved mode list it in `static_args` (see below)"),
    "reduce_on_plateau": (
        lambda: optax.chain(m_entropy_sgd(),
                            optax.contrib.reduce_on_plateau(factor=0.5, patience=0)),
        {"step-interleaved": AFTER, "fused update": AFTER,
         "make_train_step": refused("reduce_on_plateau", "it needs `value=`"),
         "NNX helper": refused("reduce_on_plateau", "as by `make_train_step`")},
        "`optax.chain(entropy_sgd(...), contrib.reduce_on_plateau(...))`; put it in the outer "
        "transform instead",
        "the refusal"),
    "lookahead": (
        lambda: optax.lookahead(m_entropy_sgd(), sync_period=2, slow_step_size=0.5),
        {"step-interleaved": AFTER,
         "fused update": refused("grad_fn", "by optax: lookahead passes on no `grad_fn`"),
         "make_train_step": refused("lookahead"),
         "NNX helper": refused("lookahead")},
        "`optax.lookahead(entropy_sgd(...), ...)`",
        "the refusal"),
    "schedule_free": (
        lambda: optax.contrib.schedule_free(m_entropy_sgd(), learning_rate=1.0),
        {"step-interleaved": AFTER, "fused update": AFTER,
         "make_train_step": refused("schedule_free"),
         "NNX helper": refused("schedule_free")},
        "`optax.contrib.schedule_free(entropy_sgd(...), ...)`",
        "the refusal"),
}


def m_problem():
  params = make_params()
  return params, make_batches(4 * M_L, seed=3)


def m_chunk(batches, t, size=M_L):
  return jax.tree.map(lambda a: a[t * size:(t + 1) * size], batches)


def m_extra(name, params):
  extra = {}
  if name == "reduce_on_plateau":
    extra["value"] = jnp.asarray(1.0)
  if name in ("multi_transform", "masked"):
    extra["full_params"] = params
  return extra


def m_params(name, params):
  return optax.LookaheadParams.init_synced(params) if name == "lookahead" else params


def m_fast(params):
  return params.fast if isinstance(params, optax.LookaheadParams) else params


def run_mode(name, tx, mode, params, batches, outer_steps=2):
  """``outer_steps`` outer steps of ``tx`` in ``mode``; returns the params
  (the anchor), or in the NNX helper's case the model's params."""
  if mode != "NNX helper":
    params = m_params(name, params)
  if mode == "step-interleaved":
    calls = outer_steps * M_L * (2 if name == "MultiSteps" else 1)

    @jax.jit
    def step(p, s, batch):
      u, s = tx.update(jax.grad(loss)(m_fast(p), batch), s, p, **m_extra(name, p))
      return optax.apply_updates(p, u), s

    state = tx.init(params)
    for i in range(calls):
      params, state = step(params, state, harness.take(batches, i))
    return m_fast(params), state
  if mode == "fused update":

    @jax.jit
    def fused(p, s, chunk):
      u, s = tx.update(jax.grad(loss)(m_fast(p), harness.take(chunk, 0)), s, p,
                       grad_fn=jax.grad(loss), batches=jax.tree.map(lambda a: a[1:], chunk),
                       **m_extra(name, p))
      return optax.apply_updates(p, u), s

    state = tx.init(params)
    for t in range(outer_steps):
      params, state = fused(params, state, m_chunk(batches, t))
    return m_fast(params), state
  if mode == "make_train_step":
    step = entropy_optax.make_train_step(loss, tx, donate=False)
    state = tx.init(params)
    for t in range(outer_steps):
      params, state, _ = step(params, state, m_chunk(batches, t))
    return params, state
  from flax import nnx

  class Model(nnx.Module):
    def __init__(self, p):
      self.w, self.b = nnx.Param(p["w"]), nnx.Param(p["b"])

  model = Model(params)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  nnx_loss = lambda m, batch: loss({"w": m.w[...], "b": m.b[...]}, batch)
  step = nnx.jit(entropy_optax.flax.nnx_fused_update, static_argnums=2)
  for t in range(outer_steps):
    step(model, optimizer, nnx_loss, m_chunk(batches, t))
  return {"b": model.b[...], "w": model.w[...]}, optimizer.opt_state


_REFERENCES = {}


def m_reference(kind):
  """Reference results, shared by the cells: computed once each."""
  if kind not in _REFERENCES:
    params, batches = m_problem()
    if kind == "plain":
      _REFERENCES[kind] = run_mode("plain", m_entropy_sgd(), "step-interleaved", params,
                                   batches)[0]
    elif kind == "inner clip":
      _REFERENCES[kind] = run_mode("plain", m_entropy_sgd(
          inner=optax.clip_by_global_norm(0.05)), "step-interleaved", params, batches)[0]
    elif kind == "b constant":
      _REFERENCES[kind] = reference_with_b_constant(params, batches, 2 * M_L, m_entropy_sgd())
  return _REFERENCES[kind]


def check_works(name, mode, got, state, params, batches):
  """Asserts the cell's result is what the composition should give."""
  ulps = 64
  if name in ("plain", "apply_if_finite", "inject_hyperparams"):
    harness.assert_close_ulp(got, m_reference("plain"), ulps=ulps)
  elif name in ("multi_transform", "masked"):
    assert_equal(got["b"], params["b"])
    harness.assert_close_ulp(got["w"], m_reference("b constant"), ulps=ulps)
  elif name == "chain before" and mode == "step-interleaved":
    harness.assert_close_ulp(got, m_reference("inner clip"), ulps=ulps)
  elif name == "chain before":  # fused update: the first gradient clipped, by hand
    tx, clip = m_entropy_sgd(), optax.clip_by_global_norm(0.05)

    @jax.jit
    def fused(p, s, chunk):
      g, _ = clip.update(jax.grad(loss)(p, harness.take(chunk, 0)), clip.init(p))
      u, s = tx.update(g, s, p, grad_fn=jax.grad(loss),
                       batches=jax.tree.map(lambda a: a[1:], chunk))
      return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for t in range(2):
      p, s = fused(p, s, m_chunk(batches, t))
    harness.assert_close_ulp(got, p, ulps=ulps)
  elif name == "MultiSteps" and mode == "step-interleaved":
    tx = m_entropy_sgd()

    @jax.jit
    def step(p, s, two):
      grads = [jax.grad(loss)(p, harness.take(two, i)) for i in range(2)]
      u, s = tx.update(jax.tree.map(lambda a, b: (a + b) / 2, *grads), s, p)
      return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for i in range(2 * M_L):
      p, s = step(p, s, m_chunk(batches, i, 2))
    harness.assert_close_ulp(got, p, ulps=ulps)
  elif name == "MultiSteps":  # fused update: 2 calls, one outer step
    assert int(entropy_optax.find_state(state).count) == 1
  else:
    raise AssertionError(f"no check for {name} in {mode}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(MATRIX))
def test_each_wrapper_works_or_is_refused_by_name_in_each_mode(name, mode):
  build, cells, _, _ = MATRIX[name]
  cell = cells[mode]
  params, batches = m_problem()
  if cell.kind == REFUSED_BY_NAME:
    with pytest.raises(REFUSED + (TypeError,), match=cell.match):
      # Three outer steps: schedule-free's params leave the anchor from the third.
      jax.block_until_ready(run_mode(name, build(), mode, params, batches, outer_steps=3))
  else:
    got, state = run_mode(name, build(), mode, params, batches)
    check_works(name, mode, got, state, params, batches)


def render_table() -> str:
  """The matrix as the Markdown table of ``docs/compositions.md``."""
  lines = ["| wrapper | " + " | ".join(MODES) + " | checked against |",
           "|---" * (len(MODES) + 2) + "|"]
  for _, cells, what, checked in MATRIX.values():
    shown = []
    for mode in MODES:
      cell = cells[mode]
      mark = "works" if cell.kind == WORKS else "**refused**"
      shown.append(f"{mark}: {cell.detail}" if cell.detail else mark)
    lines.append(f"| {what} | " + " | ".join(shown) + f" | {checked} |")
  return "\n".join(lines) + "\n"


TABLE_PAGE = __import__("pathlib").Path(__file__).parents[1] / "docs" / "compositions.md"
BEGIN, END = "<!-- matrix: begin -->\n", "<!-- matrix: end -->\n"


def test_the_docs_table_is_the_matrix():
  page = TABLE_PAGE.read_text()
  committed = page[page.index(BEGIN) + len(BEGIN):page.index(END)]
  assert committed == render_table(), (
      "docs/compositions.md's table differs from the matrix: run "
      "`python tests/test_compositions.py` to rewrite it.")


if __name__ == "__main__":
  page = TABLE_PAGE.read_text()
  TABLE_PAGE.write_text(page[:page.index(BEGIN) + len(BEGIN)] + render_table()
                        + page[page.index(END):])
