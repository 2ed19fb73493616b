"""Lanczos tridiagonalisation with full reorthogonalisation."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class LanczosResult(NamedTuple):
  """m steps of Lanczos: ``basis @ A @ basis.T`` is the tridiagonal T."""

  alphas: jax.Array
  """The diagonal of T, shape (m,)."""
  betas: jax.Array
  """The off-diagonal of T, shape (m - 1,); 0 where the Krylov space closed."""
  basis: jax.Array
  """Orthonormal Lanczos vectors as rows, shape (m, n)."""


def _orthogonalise(basis: jax.Array, w: jax.Array) -> jax.Array:
  # Classical Gram-Schmidt twice against every stored vector: one pass leaves
  # errors of order eps * cond, the second brings them to eps ("twice is
  # enough"). Rows not filled yet are zero and remove nothing.
  w = w - basis.T @ (basis @ w)
  return w - basis.T @ (basis @ w)


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    num_steps: int,
    key: jax.Array,
) -> LanczosResult:
  """Lanczos on a symmetric operator, every vector reorthogonalised.

  Without reorthogonalisation rounding errors make converged Ritz values
  reappear as spurious copies ("ghosts"), which would put false mass in a
  spectral density. Storing the m vectors costs m * n numbers.

  Args:
    matvec: the symmetric operator on vectors of length n.
    start: the nonzero start vector, shape (n,).
    num_steps: m, the number of products with the operator (static).
    key: PRNG key of the fresh vectors drawn if the Krylov space closes
      (an invariant subspace found before m steps); their couplings are 0.

  Returns:
    The tridiagonal T's diagonal and off-diagonal, and the Lanczos basis.
  """
  if num_steps < 1 or num_steps > start.shape[0]:
    raise ValueError(
        f"num_steps must be in [1, n = {start.shape[0]}] (the vector length), "
        f"got {num_steps}."
    )
  dtype = start.dtype
  tiny = 100 * jnp.finfo(dtype).eps

  def body(i, carry):
    basis, alphas, betas, v = carry
    basis = basis.at[i].set(v)
    av = matvec(v)
    alpha = jnp.vdot(v, av)
    w = _orthogonalise(basis, av)
    beta = jnp.linalg.norm(w)

    def restart(_):
      r = jax.random.normal(jax.random.fold_in(key, i), v.shape, dtype)
      r = _orthogonalise(basis, r)
      return r / jnp.linalg.norm(r), jnp.zeros((), dtype)

    v, beta = jax.lax.cond(
        beta > tiny * jnp.linalg.norm(av),
        lambda _: (w / beta, beta),
        restart,
        None,
    )
    return basis, alphas.at[i].set(alpha), betas.at[i].set(beta), v

  init = (
      jnp.zeros((num_steps, start.shape[0]), dtype),
      jnp.zeros((num_steps,), dtype),
      jnp.zeros((num_steps,), dtype),
      start / jnp.linalg.norm(start),
  )
  basis, alphas, betas, _ = jax.lax.fori_loop(0, num_steps, body, init)
  return LanczosResult(alphas, betas[:-1], basis)


def tridiagonal_eigh(alphas: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues (ascending) and eigenvectors (columns) of the tridiagonal T."""
  t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
  return jnp.linalg.eigh(t)
