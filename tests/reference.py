"""An independent float64 NumPy statement of the algorithm (docs/algorithm.md).

It shares no code with entropy_optax: the tests compare the package against
it. The model is a small tanh MLP with a squared loss and hand-written
backpropagation; the noise is off (eps = 0), so the run is deterministic.
"""

from __future__ import annotations

import numpy as np


def init_mlp(seed: int = 0, sizes=(3, 5, 2)) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
      "w1": rng.normal(size=(sizes[0], sizes[1])) / np.sqrt(sizes[0]),
      "b1": 0.1 * rng.normal(size=sizes[1]),
      "w2": rng.normal(size=(sizes[1], sizes[2])) / np.sqrt(sizes[1]),
      "b2": 0.1 * rng.normal(size=sizes[2]),
  }


def make_batches(n: int, seed: int = 1, batch=8, sizes=(3, 5, 2)):
  """n minibatches as one dict of arrays with leading axis n."""
  rng = np.random.default_rng(seed)
  return {
      "x": rng.normal(size=(n, batch, sizes[0])),
      "y": rng.normal(size=(n, batch, sizes[2])),
  }


def mlp_loss_and_grad(p, x, y):
  """0.5 * mean over the batch of ||tanh(x W1 + b1) W2 + b2 - y||^2."""
  h = np.tanh(x @ p["w1"] + p["b1"])
  r = h @ p["w2"] + p["b2"] - y
  n = x.shape[0]
  loss = 0.5 * np.sum(r**2) / n
  dr = r / n
  dh = (dr @ p["w2"].T) * (1 - h**2)
  grads = {"w2": h.T @ dr, "b2": dr.sum(0), "w1": x.T @ dh, "b1": dh.sum(0)}
  return loss, grads


def entropy_sgd_reference(
    params,
    batches,
    *,
    outer_steps: int,
    L: int,
    gamma0: float,
    gamma1: float = 0.0,
    eta_prime: float = 0.1,
    alpha: float = 0.75,
    beta: float = 0.0,
    nesterov: bool = True,
    wd: float = 0.0,
    eta: float = 1.0,
    outer_momentum: float = 0.0,
    scale_by_gamma: bool = False,
):
  """Runs the outer steps of docs/algorithm.md, one fresh minibatch per inner step."""
  x = {k: np.array(v, np.float64) for k, v in params.items()}
  velocity = {k: np.zeros_like(v) for k, v in x.items()}
  b = 0
  for t in range(outer_steps):
    gamma = gamma0 * (1 + gamma1) ** t
    xp = {k: v.copy() for k, v in x.items()}
    mu = {k: v.copy() for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    for _ in range(L):
      _, g = mlp_loss_and_grad(xp, batches["x"][b], batches["y"][b])
      b += 1
      for k in x:
        m[k] = beta * m[k] + g[k]
        gk = g[k] + beta * m[k] if nesterov else m[k]
        d = gk - gamma * (x[k] - xp[k]) + wd * xp[k]
        xp[k] = xp[k] - eta_prime * d
        mu[k] = alpha * mu[k] + (1 - alpha) * xp[k]
    for k in x:
      D = x[k] - mu[k]
      if scale_by_gamma:
        D = gamma * D
      if outer_momentum:
        velocity[k] = outer_momentum * velocity[k] + D
        D = D + outer_momentum * velocity[k] if nesterov else velocity[k]
      x[k] = x[k] - eta * D
  return x
