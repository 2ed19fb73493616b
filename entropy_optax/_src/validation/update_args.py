"""Update-time checks: the arguments of an ``update`` call and the state it is handed.

They look at shapes, structures and dtypes, which are static under ``jit``,
and at the structures the package is handed (never at other libraries'
frames or private names). Wrong types raise ``TypeError``, wrong values and
shapes ``ValueError``.
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
from entropy_optax._src.validation.run_time import refuse_unless


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
