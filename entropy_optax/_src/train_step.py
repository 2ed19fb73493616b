"""``make_train_step``: one jitted call per chunk of minibatches, any optax transform."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropy_optax._src import validation
from entropy_optax._src.state_utils import find_state
from entropy_optax._src.state_utils import replace_carry
from entropy_optax._src.transform import BatchCountError
from entropy_optax._src.transform import EntropySGDState


def steps_of(batches: Any) -> int:
  """The length of the leading (minibatch) axis of stacked minibatches.

  Raises:
    ValueError: if ``batches`` has no array leaves, a 0-d leaf, or leaves
      whose leading axes differ; the message names the leaves.
  """
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError("batches holds no arrays: pass minibatches stacked along a leading axis.")
  lengths = {}
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


@contextlib.contextmanager
def restating_batch_count(batches: Any, caller: str) -> Iterator[None]:
  """Restates a fused call's wrong minibatch count in its caller's terms.

  ``caller`` passes all L minibatches (the first for the gradient at the
  anchor) and hands the transform indices of the other L - 1, whose shape
  would mean nothing to the user.
  """
  try:
    yield
  except BatchCountError as error:
    inner_steps = error.inner_steps
    path, leaf = jax.tree_util.tree_leaves_with_path(batches)[0]
    raise ValueError(
        f"{caller} takes one outer step of inner_steps = {inner_steps} "
        f"minibatches, stacked along the leading axis of every leaf of "
        f"batches, but batches{jax.tree_util.keystr(path)} has shape "
        f"{np.shape(leaf)}: {np.shape(leaf)[0]} minibatches. Pass "
        f"{inner_steps} (e.g. reshape the data to ({inner_steps}, batch_size, "
        "...)), or build the transform with inner_steps="
        f"{np.shape(leaf)[0]}."
    ) from None


def minibatch_picker(batches: Any) -> Callable[[Any], Any]:
  """``pick(k)``: minibatch ``k`` of ``batches`` (k may be traced), no copy."""
  return lambda k: jax.tree.map(
      lambda a: jax.lax.dynamic_index_in_dim(a, k, keepdims=False), batches
  )


def holds_entropy_state(opt_state: optax.OptState) -> bool:
  """True when ``opt_state`` holds an :class:`EntropySGDState`."""
  is_state = lambda node: isinstance(node, EntropySGDState)
  return any(is_state(n) for n in jax.tree.leaves(opt_state, is_leaf=is_state))


def _mean_over_steps(total: Any, steps: int) -> Any:
  return jax.tree.map(lambda a: a / steps, total)


def make_train_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    has_state: bool = False,
    donate: bool = True,
    unroll: int | bool = False,
) -> Callable[..., tuple[Any, ...]]:
  """A jitted train step over K minibatches: one outer step of Entropy-SGD.

  The step takes minibatches stacked along a leading axis of length K. With
  an Entropy-SGD transform (``entropy_sgd``, ``entropy_adam``,
  ``local_entropy``, alone or wrapped), K is ``inner_steps`` and the call is
  one fused outer step: the step computes the gradient at the params (the
  anchor) on the first minibatch and runs the other K - 1 Langevin steps in
  the transform's ``lax.scan``, so the returned params are the anchor. With
  any other optax transform it takes K ordinary steps in a ``lax.scan``: the
  same gradient evaluations per call, which makes comparisons at equal
  effective epochs one loop.

  ``loss_fn`` is called as ``loss_fn(params, batch)``, or
  ``loss_fn(params, model_state, batch)`` with ``has_state``, plus the keyword
  ``key=`` (a fresh PRNG key per minibatch, for dropout) when the step is
  given a ``key``. It returns the scalar loss, or a tuple: ``(loss, aux)``
  with ``has_aux``, ``(loss, model_state)`` with ``has_state``,
  ``(loss, (model_state, aux))`` with both. The model state (BatchNorm
  statistics, say) is threaded through the K minibatches; with Entropy-SGD it
  rides the transform's ``carry=`` contract.

  Args:
    loss_fn: the loss, as above.
    tx: any optax transform; Entropy-SGD ones run fused.
    has_aux: ``loss_fn`` also returns aux (numbers; averaged over the K
      minibatches into ``metrics["aux"]``).
    has_state: ``loss_fn`` takes and returns mutable model state.
    donate: donate the params, opt_state and model_state buffers to the
      step, so that they are updated in place; do not reuse the arrays you
      pass in.
    unroll: for the K ordinary steps of a plain optax transform: ``False``
      (default) a ``lax.scan`` loop, ``True`` no loop, an int ``lax.scan``'s
      unroll (an Entropy-SGD transform takes its own ``unroll=``). On CPU,
      convolutional nets want ``True``: XLA's CPU backend runs a convolution's
      weight gradient inside a loop several times slower.

  Returns:
    ``step(params, opt_state, batches, model_state=None, key=None)``, jitted,
    returning ``(params, opt_state, metrics)``, and with ``has_state``
    ``(params, opt_state, metrics, model_state)``. ``metrics["loss"]`` is the
    mean loss over the K minibatches (the inner loss: at the walker, for
    Entropy-SGD). With Entropy-SGD, ``metrics["skipped"]`` is 1 when the
    outer step was abandoned because a non-finite value appeared (params and
    state are then as they came in, but for the state's ``skipped`` count):
    log it, and stop or lower the step sizes when it keeps coming back. An
    Entropy-SGD state's carry slot is left as it came in.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p, batch: jnp.mean((batch["x"] @ p - batch["y"]) ** 2)
    >>> tx = entropy_optax.entropy_sgd(1.0, inner_steps=4, noise=0.0)
    >>> step = entropy_optax.make_train_step(loss, tx)
    >>> params = jnp.zeros(3)
    >>> opt_state = tx.init(params)
    >>> batches = {"x": jnp.ones((4, 8, 3)), "y": jnp.ones((4, 8))}  # K = L = 4
    >>> params, opt_state, metrics = step(params, opt_state, batches)
    >>> int(opt_state.count), float(metrics["loss"]) < 1.0, int(metrics["skipped"])
    (1, True, 0)
  """

  def evaluate(params, model_state, batch, key):
    """(loss, model_state, aux) of one minibatch; grads w.r.t. params."""
    args = (params, model_state, batch) if has_state else (params, batch)
    kwargs = {} if key is None else {"key": key}
    out = loss_fn(*args, **kwargs)
    if not (has_aux or has_state):
      return out, (None, None)
    loss, extra = out
    if has_aux and has_state:
      return loss, extra
    return loss, (extra, None) if has_state else (None, extra)

  value_and_grad = jax.value_and_grad(evaluate, has_aux=True)

  def grad_and_carry(params, batch, carry):
    """The fused carry contract: carry = (model_state, loss sum, aux sum)."""
    model_state, loss_sum, aux_sum = carry
    batch, key = batch
    (loss, (model_state, aux)), grads = value_and_grad(params, model_state, batch, key)
    aux_sum = jax.tree.map(jnp.add, aux_sum, aux) if has_aux else None
    return grads, (model_state, loss_sum + loss, aux_sum)

  def first_carry(params, model_state, batch):
    """The gradient on the first minibatch and the carry after it."""
    (loss, (model_state, aux)), grads = value_and_grad(params, model_state, *batch)
    aux_sum = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), aux) if has_aux else None
    return grads, (model_state, loss.astype(jnp.float32), aux_sum)

  def fused(params, opt_state, batches, model_state):
    # The scan runs over minibatch indices, not over ``batches[1:]``, which
    # XLA would copy.
    pick = minibatch_picker(batches)
    grads, carry = first_carry(params, model_state, pick(0))
    updates, new_state = tx.update(
        grads, opt_state, params,
        grad_fn=lambda p, k, c: grad_and_carry(p, pick(k), c),
        batches=jnp.arange(1, steps_of(batches), dtype=jnp.int32), carry=carry,
    )
    carry = find_state(new_state).carry
    return optax.apply_updates(params, updates), replace_carry(
        new_state, find_state(opt_state).carry
    ), carry

  def plain(params, opt_state, batches, model_state):
    def apply(params, opt_state, grads):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    pick = minibatch_picker(batches)

    def scan_body(loop, k):
      params, opt_state, carry = loop
      grads, carry = grad_and_carry(params, pick(k), carry)
      return (*apply(params, opt_state, grads), carry), None

    grads, carry = first_carry(params, model_state, pick(0))
    loop = (*apply(params, opt_state, grads), carry)
    rest = steps_of(batches) - 1
    if unroll is True or (unroll is not False and 1 < unroll and rest <= unroll):
      for k in range(1, rest + 1):  # no loop at all: lax.scan keeps a one-trip loop
        loop, _ = scan_body(loop, k)
    else:
      loop, _ = jax.lax.scan(
          scan_body, loop, jnp.arange(1, rest + 1, dtype=jnp.int32),
          unroll=1 if unroll is False else unroll,
      )
    return loop

  def step(params, opt_state, batches, model_state=None, key=None):
    steps = steps_of(batches)
    keys = None if key is None else jax.random.split(key, steps)
    entropy = holds_entropy_state(opt_state)
    if entropy:
      skipped_before = find_state(opt_state).skipped
      with restating_batch_count(batches, "make_train_step's step"):
        params, opt_state, (model_state, loss_sum, aux_sum) = fused(
            params, opt_state, (batches, keys), model_state
        )
    else:
      params, opt_state, (model_state, loss_sum, aux_sum) = plain(
          params, opt_state, (batches, keys), model_state
      )
    metrics = {"loss": loss_sum / steps}
    if entropy:
      metrics["skipped"] = jnp.sum(find_state(opt_state).skipped - skipped_before)
    if has_aux:
      metrics["aux"] = _mean_over_steps(aux_sum, steps)
    if has_state:
      return params, opt_state, metrics, model_state
    return params, opt_state, metrics

  unroll = validation.check_unroll(unroll)
  donated = ("params", "opt_state", "model_state") if donate else ()
  return jax.jit(step, donate_argnames=donated)
