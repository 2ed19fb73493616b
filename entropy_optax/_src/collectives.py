"""The collectives of a compiled XLA program: what a sharded step communicates."""

from __future__ import annotations

import re
from typing import NamedTuple, Union

import jax
import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# "%name = <shape or (tuple of shapes)> <kind>(" or its async "<kind>-start(".
_OP = re.compile(r"= (\([^=]*?\)|\S+) (%s)(?:-start)?\(" % "|".join(KINDS))
_ARRAY = re.compile(r"\b(pred|[a-z]+\d+)\[([\d,]*)\]")


class Collective(NamedTuple):
  """One collective op of a compiled program, as one device runs it."""

  kind: str
  """``all-reduce``, ``all-gather``, ``reduce-scatter``, ``collective-permute``
  or ``all-to-all``."""
  shapes: tuple[str, ...]
  """Its result's array shapes, e.g. ``("f32[32,16]", "pred[]")``; XLA
  combines several arrays into one op."""
  elements: int
  """Elements in its result, summed over ``shapes``."""
  bytes: int
  """Bytes of its result (a pred counts one byte)."""


def hlo_collectives(compiled: Union[jax.stages.Compiled, str]) -> list[Collective]:
  """Lists the collectives of a compiled program, in program order.

  A collective inside a loop body (the fused inner ``lax.scan``) or a
  conditional branch is listed once, however often it runs.

  Args:
    compiled: ``jax.jit(f).lower(*args).compile()``, or its ``as_text()``.

  Returns:
    One :class:`Collective` per op.

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax
    >>> compiled = jax.jit(lambda x: 2 * x).lower(jnp.ones(3)).compile()
    >>> entropy_optax.hlo_collectives(compiled)  # one device: no communication
    []
  """
  text = compiled if isinstance(compiled, str) else compiled.as_text()
  found = []
  for result, kind in _OP.findall(text):
    arrays = _ARRAY.findall(result)
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for _, dims in arrays]
    widths = [1 if dtype == "pred" else max(int(re.sub(r"\D", "", dtype)) // 8, 1)
              for dtype, _ in arrays]
    found.append(Collective(
        kind=kind,
        shapes=tuple(f"{dtype}[{dims}]" for dtype, dims in arrays),
        elements=int(sum(sizes)),
        bytes=int(sum(n * w for n, w in zip(sizes, widths))),
    ))
  return found
