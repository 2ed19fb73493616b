"""Checks of what the user passes: hyperparameters, update arguments, states.

Construction-time checks look at concrete numbers only. Traced values
(``optax.inject_hyperparams`` passes hyperparameters as arrays inside ``jit``)
and schedules are accepted as they are: their values are not known when the
transform is built. Update-time checks look at shapes, structures and dtypes,
which are static under ``jit``, and at the structures the package is handed
(never at other libraries' frames or private names). The few checks of values
that only a running step knows go through :func:`refuse_unless`, which raises
at once outside ``jit`` and, inside it, from a host callback when the step
runs. Wrong types raise ``TypeError``, wrong values and shapes ``ValueError``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropy_optax._src import state as state_lib
from entropy_optax._src import tree_utils


def concrete_value(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None when it is not concrete."""
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  array = np.asarray(value)
  # jnp.issubdtype knows bfloat16 (inject_hyperparams casts to the params' dtype).
  if array.shape != () or not jnp.issubdtype(array.dtype, jnp.number):
    return None
  return float(array)


def is_static_zero(value: Any) -> bool:
  """True only for a Python number equal to 0.

  Arrays never count, even concrete ones: ``optax.inject_hyperparams`` passes
  concrete arrays to ``init`` and traced ones to ``update``, and both calls
  must build the same state structure.
  """
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == 0


def _check_real(name: str, value: Any) -> float | None:
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a number or a schedule, got the bool {value!r}.")
  if callable(value) or isinstance(value, jax.core.Tracer):
    return None
  if not isinstance(value, numbers.Real):
    array = np.asarray(value) if isinstance(value, (np.ndarray, np.generic, jax.Array)) else None
    if array is None or array.shape != () or not jnp.issubdtype(array.dtype, jnp.number):
      raise TypeError(
          f"{name} must be a real scalar or an optax schedule, got {value!r} "
          f"of type {type(value).__name__}."
      )
  number = concrete_value(value)
  if number is not None and not np.isfinite(number):
    raise ValueError(f"{name} must be finite, got {number}.")
  return number


def check_non_negative(name: str, value: Any) -> None:
  number = _check_real(name, value)
  if number is not None and not number >= 0:
    raise ValueError(f"{name} must be >= 0, got {number}.")


def check_positive(name: str, value: Any) -> None:
  number = _check_real(name, value)
  if number is not None and not number > 0:
    raise ValueError(f"{name} must be > 0, got {number}.")


def check_unit_interval(name: str, value: Any) -> None:
  """Checks 0 <= value < 1 (a decay or momentum coefficient)."""
  number = _check_real(name, value)
  if number is not None and not 0 <= number < 1:
    raise ValueError(f"{name} must lie in [0, 1), got {number}.")


def check_fraction(name: str, value: Any) -> None:
  """Checks 0 < value <= 1 (a step towards a target, 1 reaching it)."""
  number = _check_real(name, value)
  if number is not None and not 0 < number <= 1:
    raise ValueError(f"{name} must lie in (0, 1], got {number}.")


def check_transform(name: str, value: Any, example: str) -> None:
  """``value`` must be an ``optax.GradientTransformation``."""
  if not isinstance(value, optax.GradientTransformation):
    raise TypeError(
        f"{name} must be an optax.GradientTransformation such as {example}, "
        f"got {type(value).__name__}."
    )


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


def check_inner_steps(inner_steps: Any, *, static: bool = False) -> Any:
  """L: a Python int >= 1, or (``static=False``) a traced integer scalar.

  ``optax.inject_hyperparams`` injects the numeric ``inner_steps`` (its
  default included): a concrete array at ``init``, a traced one at ``update``.
  Step-interleaved mode compares the Langevin count with it at run time, and
  fused mode takes L from its ``batches``, so a traced L works in both;
  :func:`entropy_optax.parle` needs it static.
  """
  if isinstance(inner_steps, jax.core.Tracer):
    if static or not jnp.issubdtype(inner_steps.dtype, jnp.integer) or inner_steps.shape:
      raise TypeError(
          "inner_steps must be a static Python int, but it was traced. With "
          "optax.inject_hyperparams pass static_args=('inner_steps',)."
      )
    return inner_steps
  return check_positive_int("inner_steps", inner_steps)


def check_positive_int(name: str, value: Any) -> int:
  """A Python int >= 1 (a count such as ``n_replicas`` or ``inner_steps``).

  A concrete integer scalar array counts as its value: it is what
  ``optax.inject_hyperparams`` passes to ``init``, and what a checkpoint
  restores.
  """
  if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not isinstance(
      value, jax.core.Tracer) and np.shape(value) == () and jnp.issubdtype(
          np.asarray(value).dtype, jnp.integer):
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{name} must be a positive Python int, got {value!r} of type "
        f"{type(value).__name__}."
    )
  if value < 1:
    raise ValueError(f"{name} must be >= 1, got {value}.")
  return int(value)


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r}.")
  return bool(value)


def check_unroll(unroll: Any) -> int | bool:
  """``lax.scan``'s ``unroll``: a bool (False: a loop; True: no loop), or a static int >= 1."""
  if isinstance(unroll, (bool, np.bool_)):
    return bool(unroll)
  if isinstance(unroll, jax.core.Tracer):
    raise TypeError(
        "unroll must be static, but it was traced. With optax.inject_hyperparams "
        "pass static_args=('unroll',), or a bool (bools are not injected)."
    )
  try:
    return check_positive_int("unroll", unroll)
  except TypeError:
    raise TypeError(
        "unroll must be a bool or a static Python int >= 1 (lax.scan's unroll), "
        f"got {unroll!r} of type {type(unroll).__name__}."
    ) from None
  except ValueError:
    raise ValueError(
        f"unroll must be >= 1 (or True for a full unroll), got {unroll}."
    ) from None


# Run-time checks: values that only a running step knows.


def refuse_unless(ok: Any, message: Callable[..., str], *values: Any) -> None:
  """Raises ``ValueError(message(*values))`` unless ``ok`` holds everywhere.

  Outside ``jit`` it raises here. Traced, the check runs with the step: a
  host callback, taken only when ``ok`` fails, raises, and the error reaches
  the caller of the jitted step (as a ``JaxRuntimeError`` that carries the
  message) instead of its results. Under ``vmap`` the callback sees every
  replica's ``ok`` and raises if any fails.
  """
  if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((ok, values))):
    if not np.all(np.asarray(ok)):
      raise ValueError(message(*values))
    return

  def fail(ok, *values):
    if not np.all(ok):
      raise ValueError(message(*values))

  jax.lax.cond(jnp.all(ok), lambda: None, lambda: jax.debug.callback(fail, ok, *values))


# Update-time checks: the arguments of an update call.


def check_params_given(params: Any, what: str) -> None:
  """Entropy-SGD and Parle need the params: the walker or the anchor."""
  if params is None:
    raise ValueError(
        f"{what} needs params: call update(grads, state, params); in "
        "step-interleaved mode params is the walker x'."
    )


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number))


def check_like_params(name: str, tree: Any, params: Any) -> None:
  """Raises unless ``tree`` has the structure and shapes of ``params``."""
  if jax.tree.structure(tree) != jax.tree.structure(params):  # type: ignore[operator]
    raise ValueError(
        f"{name} must have the tree structure of params.\n"
        f"  {name}: {jax.tree.structure(tree)}\n"
        f"  params: {jax.tree.structure(params)}"
    )
  for (path, leaf), param in zip(
      jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(params), strict=True
  ):
    if not _is_array(leaf):
      raise TypeError(
          f"{name}{jax.tree_util.keystr(path)} must be an array, got "
          f"{type(leaf).__name__}."
      )
    if np.shape(leaf) != np.shape(param):
      raise ValueError(
          f"{name}{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}, but "
          f"the param there has shape {np.shape(param)}."
      )


def check_grad_fn_output(grads: Any, params: Any) -> None:
  """Checks what ``grad_fn`` returned, naming ``jax.value_and_grad`` if that is it."""
  params_structure = jax.tree.structure(params)
  if (
      jax.tree.structure(grads) != params_structure  # type: ignore[operator]
      and isinstance(grads, tuple)
      and len(grads) == 2
      and jax.tree.structure(grads[1]) == params_structure  # type: ignore[operator]
      and not jax.tree.leaves(grads[0])[1:]
  ):
    raise TypeError(
        "grad_fn returned a pair (value, grads), as jax.value_and_grad does; "
        "grad_fn must return the grads only: pass jax.grad(loss). To get the "
        "loss out of the inner loop, pass carry= and have grad_fn return "
        "(grads, carry) with the loss summed into the carry (make_train_step "
        "does this for you)."
    )
  check_like_params("grads returned by grad_fn", grads, params)


def check_grad_fn_pair(out: Any) -> None:
  """With ``carry=``, ``grad_fn`` returns the pair ``(grads, carry)``."""
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(
        "with carry=, grad_fn(params, batch, carry) must return the pair "
        f"(grads, carry); it returned a {type(out).__name__}."
    )


def check_floating(params: Any) -> None:
  """Every leaf of params must be a float array: Langevin steps move them."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
          f"params{jax.tree_util.keystr(path)} has dtype {jnp.result_type(leaf)}; "
          "Entropy-SGD moves params by Langevin steps, so every leaf must be a "
          "float array. Keep integer or bool leaves out of the optimized tree "
          "(optax.masked or optax.multi_transform with optax.set_to_zero)."
      )


def check_state_matches(anchor: Any, params: Any) -> None:
  """The state was built by ``init`` on params of this structure."""
  if jax.tree.structure(anchor) != jax.tree.structure(params):  # type: ignore[operator]
    raise ValueError(
        "opt_state was initialised for params of another structure: call "
        "tx.init on these params.\n"
        f"  params: {jax.tree.structure(params)}\n"
        f"  opt_state's anchor: {jax.tree.structure(anchor)}"
    )


def check_mode_args(grad_fn: Any, batches: Any, carry: Any, inner_steps: Any) -> bool:
  """Checks the fused-mode keywords come together; returns True for fused mode."""
  if (grad_fn is None) != (batches is None):
    count = f" = {inner_steps - 1}" if isinstance(inner_steps, int) else ""
    raise ValueError(
        "fused mode needs both grad_fn and batches (the remaining "
        f"inner_steps - 1{count} minibatches); got only "
        f"{'grad_fn' if batches is None else 'batches'}. Pass neither for "
        "step-interleaved mode."
    )
  if carry is not None and grad_fn is None:
    raise ValueError("carry is threaded through grad_fn: pass grad_fn and batches too.")
  return grad_fn is not None


def check_not_mid_loop(inner_count: Any, inner_steps: Any) -> None:
  """A fused call starts an outer step: the state must be between outer steps.

  Checked at run time, under ``jit`` too (:func:`refuse_unless`).
  """

  def message(taken):
    taken = int(np.max(taken))
    rest = (f"the remaining {inner_steps - taken}" if isinstance(inner_steps, int)
            else "the remaining")
    return (
        f"fused mode starts an outer step, but the state is {taken} Langevin "
        f"steps into one (a step-interleaved checkpoint, say): take {rest} "
        "step-interleaved steps first, with the walker as params."
    )

  refuse_unless(inner_count == 0, message, inner_count)


def check_at_anchor(params: Any, anchor: Any, when: Any = True) -> Any:
  """Where ``when`` holds, params must be the anchor, to rounding.

  Between outer steps the updates of Entropy-SGD put params on the anchor it
  stores (bit for bit but for the rounding of a multiply-add that XLA fuses
  in one program and not in the other). If they are not there, something
  changed the updates after it (a transform chained after it, lookahead,
  schedule-free) or the params between calls, and the stored anchor no
  longer describes the params. Checked at run time (:func:`refuse_unless`),
  to 4 ulps of the leaf's largest magnitude. Where the anchor holds a
  non-finite value the params must too (the positions are not compared).

  Every reduction here is a ``max`` over arithmetic alone (``abs``, ``-``, ``*``):
  XLA on CPU fuses those into the reduction, while a compare or select (and,
  in this program, ``abs(a) * 0``) materialises a leaf-sized temporary, and in fused mode (whose loop
  reuses the anchor's buffer) a copy of the anchor.
  """
  def same(p, a):
    wide = jnp.promote_types(p.dtype, jnp.float32)
    eps = jnp.asarray(jnp.finfo(p.dtype).eps, wide)
    p, a = p.astype(wide), a.astype(wide)
    # x * 0 is 0 for a finite x and NaN otherwise, and max propagates NaN:
    # whether a leaf holds a non-finite value, and a NaN distance.
    nonfinite_p = jnp.isnan(jnp.max(p * 0, initial=0))
    nonfinite_a = jnp.isnan(jnp.max(a * 0, initial=0))
    close = jnp.max(jnp.abs(p - a), initial=0) <= 4 * eps * jnp.max(jnp.abs(a), initial=0)
    return (~nonfinite_a & close) | (nonfinite_a & nonfinite_p)

  flags = [same(p, a) for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor),
                                      strict=True)]
  at_anchor = jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
  refuse_unless(
      at_anchor | ~jnp.asarray(when),
      lambda: (
          "the params passed to update are not where Entropy-SGD's last update "
          "put them (the anchor, between outer steps): a transform applied "
          "after Entropy-SGD changed its updates (optax.chain(entropy_sgd(...), "
          "<transform>), reduce_on_plateau, lookahead or schedule_free around "
          "it), or the params were changed between calls. Put such a transform "
          "before it, pass it as inner= (every Langevin gradient) or make it "
          "part of the outer transform (local_entropy(optax.chain(optax.sgd(1.0), "
          "<transform>))). To change the weights yourself, start a new state "
          "with tx.init(params)."
      ),
  )
  return at_anchor


def check_state_fits(state: Any, params: Any, outer_init: Callable[[Any], Any],
                     inner_momentum: Any) -> None:
  """A resumed state must fit the transform: its momentum buffer and outer state.

  What a resumed state takes from a transform built with other
  hyperparameters: the rates, scope, noise, decays and ``inner_steps`` live
  in the transform (the key in the state); the state's structure is fixed
  by ``inner_momentum`` (None or a number) and the outer transform.
  """
  if (state.momentum is None) != (inner_momentum is None):
    raise ValueError(
        "opt_state was built with inner_momentum="
        f"{'None' if state.momentum is None else 'a number'}, this transform "
        f"with inner_momentum={inner_momentum!r}: the momentum buffer exists in "
        "one and not the other. Build the transform with inner_momentum="
        f"{'None' if state.momentum is None else '<a number>'} to resume this state."
    )
  want = jax.tree.structure(jax.eval_shape(outer_init, params))
  got = jax.tree.structure(state.outer_state)
  if want != got:  # type: ignore[operator]
    raise ValueError(
        "opt_state's outer_state was built by another outer transform than this "
        "one's (learning_rate's momentum, or entropy_sgd against entropy_adam, "
        "say): resume it with the transform that built it, or start a new state "
        f"with tx.init(params).\n  opt_state's: {got}\n  this transform's: {want}"
    )


# The keyword under which make_train_step and the Flax helpers pass the first
# gradient as they computed it, for check_untransformed.
UNTRANSFORMED_GRADS = "entropy_optax_untransformed_grads"


def check_untransformed(grads: Any, untransformed: Any) -> None:
  """The first gradient reached the transform as the caller computed it.

  ``make_train_step`` and the Flax helpers pass the gradient they computed
  along with it; any transform before Entropy-SGD (``optax.chain(clip,
  entropy_sgd)``, ``optax.MultiSteps``) makes new arrays of it. In fused mode
  such a transform would see the first of the L gradients only.
  """
  is_masked = lambda node: isinstance(node, optax.MaskedNode)
  same = jax.tree.map(
      lambda g, u: True if is_masked(g) else g is u, grads, untransformed, is_leaf=is_masked
  )
  if not all(jax.tree.leaves(same)):
    raise ValueError(
        "a transform before Entropy-SGD changed the gradient it was given "
        "(optax.chain(<transform>, entropy_sgd(...)), optax.MultiSteps, ...). In "
        "fused mode it would see only the first of the inner_steps gradients of "
        "each outer step. Pass it as entropy_sgd(..., inner=<transform>), which "
        "applies it to every Langevin gradient in both modes, or train in "
        "step-interleaved mode."
    )


def check_minibatch_axis(batches: Any) -> int:
  """The length of the leading (minibatch) axis of stacked minibatches.

  Raises:
    ValueError: if ``batches`` has no array leaves, a 0-d leaf, or leaves
      whose leading axes differ; the message names the leaves.
  """
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError("batches holds no arrays: pass minibatches stacked along a leading axis.")
  lengths: dict[int, str] = {}
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
          f"batches{jax.tree_util.keystr(path)} is a scalar; every leaf of batches "
          "needs a leading minibatch axis."
      )
    lengths.setdefault(shape[0], jax.tree_util.keystr(path))
  if len(lengths) > 1:
    listed = ", ".join(f"batches{p} has {n}" for n, p in lengths.items())
    raise ValueError(
        "the leaves of batches disagree on the number of minibatches (their "
        f"leading axis): {listed}."
    )
  return next(iter(lengths))


# Wrappers whose state holds the Entropy-SGD state and that fused mode cannot
# run under, each with why; make_train_step and the Flax helpers are handed
# the whole state, so they see them.
_AROUND = (
    (optax.MultiStepsState, "optax.MultiSteps",
     "it would run the outer step on every call and keep only every k-th, "
     "throwing the other calls' minibatches away. For more data per outer step "
     "raise inner_steps or the minibatch size; MultiSteps accumulates "
     "step-interleaved updates (tx.update without grad_fn)"),
    (optax.LookaheadState, "optax.lookahead",
     "it passes no grad_fn or batches to the transform it wraps, and moves the "
     "params away from the anchor. Train Entropy-SGD without it"),
    (optax.contrib.ScheduleFreeState, "optax.contrib.schedule_free",
     "it hands the transform its interpolated params, not the anchor. Train "
     "Entropy-SGD without it"),
)


def check_fused_composition(opt_state: Any, caller: str) -> None:
  """Refuses, by name, the wrappers that fused mode cannot run under.

  Raises:
    ValueError: for :func:`entropy_optax.parle`, a state of ``optax.MultiSteps``,
      ``optax.lookahead`` or ``optax.contrib.schedule_free`` around the
      Entropy-SGD state, or any ``optax.contrib.reduce_on_plateau`` state.
  """
  if state_lib.find_all(opt_state, lambda node: isinstance(node, state_lib.ParleState)):
    raise ValueError(
        f"{caller} does not run parle: its grad_fn sees one replica at a time and "
        "its batches hold each replica's minibatches. Call tx.update(grads, state, "
        "params, grad_fn=jax.grad(loss), batches=...) with batches of shape "
        "(n_replicas, inner_steps - 1, ...), as parle's example does."
    )
  for state_type, name, why in _AROUND:
    around = state_lib.find_all(
        opt_state,
        lambda node, t=state_type: isinstance(node, t) and state_lib.holds_entropy_state(node),
    )
    if around:
      raise ValueError(f"{caller} runs fused outer steps, which {name} cannot wrap: {why}.")
  if state_lib.find_all(opt_state, lambda node: isinstance(
      node, optax.contrib.ReduceLROnPlateauState)):
    raise ValueError(
        f"{caller} cannot run optax.contrib.reduce_on_plateau: it needs value= "
        "at every update, which the step does not pass. Call tx.update yourself, "
        "with reduce_on_plateau in the outer transform: "
        "local_entropy(optax.chain(optax.sgd(1.0), reduce_on_plateau(...))), never "
        "chained after Entropy-SGD."
    )


class BatchCountError(ValueError):
  """A fused call's ``batches`` do not hold inner_steps - 1 minibatches.

  ``make_train_step`` and the Flax helpers catch it to restate it in terms
  of the batches their caller passed.
  """

  def __init__(self, message: str, inner_steps: int):
    super().__init__(message)
    self.inner_steps = inner_steps


def check_batches(batches: Any, inner_steps: int, axis: int = 0) -> None:
  """Every leaf of ``batches`` holds inner_steps - 1 minibatches along ``axis``."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(batches):
    shape = np.shape(leaf)
    if len(shape) <= axis or shape[axis] != inner_steps - 1:
      raise BatchCountError(
          "batches must hold the remaining inner_steps - 1 = "
          f"{inner_steps - 1} minibatches along each leaf's "
          f"{'leading axis' if axis == 0 else f'axis {axis}'} (the grads passed "
          f"to update are the first of inner_steps = {inner_steps}), but "
          f"batches{jax.tree_util.keystr(path)} has shape {shape}.",
          inner_steps,
      )


def check_fused_inner_steps(inner_steps: Any, batches: Any) -> int:
  """L of a fused call, static: ``inner_steps``, or, injected (traced), one
  more than the minibatches in ``batches``, checked against it at run time."""
  if isinstance(inner_steps, int):
    check_batches(batches, inner_steps)
    return inner_steps
  leaves = jax.tree.leaves(batches)
  if not leaves or not jnp.shape(leaves[0]):
    raise ValueError("batches must hold the remaining inner_steps - 1 minibatches "
                     "along the leading axis of every leaf.")
  steps = jnp.shape(leaves[0])[0] + 1
  check_batches(batches, steps)
  refuse_unless(
      inner_steps == steps,
      lambda injected: (
          f"batches hold {steps - 1} minibatches, but the injected inner_steps is "
          f"{int(injected)}: pass inner_steps - 1 = {int(injected) - 1}."
      ),
      inner_steps,
  )
  return steps


def check_full_params(full_params: Any) -> None:
  """Fused mode inside ``optax.masked``: the whole params came along."""
  if full_params is None or tree_utils.has_masked(full_params):
    raise ValueError(
        "fused mode inside optax.masked or optax.multi_transform: the transform "
        "sees only its own leaves (the others are optax.MaskedNode), but grad_fn "
        "needs the whole model. Pass the whole params again, "
        "tx.update(grads, state, params, grad_fn=..., batches=..., "
        "full_params=params), and leave mask_compatible_extra_args False "
        "(make_train_step and entropy_optax.flax.nnx_fused_update do this)."
    )


def check_replicated(name: str, tree: Any, n_replicas: int) -> None:
  """Every leaf of ``tree`` holds the replicas along its leading axis."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = np.shape(leaf)
    if not shape or shape[0] != n_replicas:
      raise ValueError(
          f"{name} must hold the n_replicas = {n_replicas} replicas along each "
          f"leaf's leading axis, but {name}{jax.tree_util.keystr(path)} has shape "
          f"{shape}; build replicated params with entropy_optax.replicate."
      )
