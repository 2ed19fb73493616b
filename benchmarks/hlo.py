"""The collectives of a compiled XLA program: what a sharded step communicates.

A measuring tool of the benchmarks and the sharding tests, not part of the
installed package.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Union

import jax
import numpy as np

_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
# "%name = <shape, or (tuple of shapes) with /*index=5*/ comments> <kind>(",
# or the async "<kind>-start(" (whose "-done" is not counted again).
_OP = re.compile(r"= ([^\n]*?) (%s)(?:-start)?\(" % "|".join(_KINDS))
# A computation starts unindented: "%name (params) -> result {", maybe after ENTRY.
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
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
  computation: str
  """The HLO computation holding it: the entry, a loop body, a branch."""


def hlo_collectives(compiled: Union[jax.stages.Compiled, str]) -> list[Collective]:
  """Lists the collectives of a compiled program, in program order.

  A collective inside a loop body (the fused inner ``lax.scan``) or a
  conditional branch is listed once, however often it runs. An asynchronous
  collective (GPU, TPU) is listed at its ``-start`` op, whose printed result
  may also hold its operand buffers.

  Args:
    compiled: ``jax.jit(f).lower(*args).compile()``, or its ``as_text()``.

  Returns:
    One :class:`Collective` per op.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from benchmarks import hlo
    >>> compiled = jax.jit(lambda x: 2 * x).lower(jnp.ones(3)).compile()
    >>> hlo.hlo_collectives(compiled)  # one device: no communication
    []
  """
  text = compiled if isinstance(compiled, str) else compiled.as_text()
  found = []
  computation = ""
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    op = _OP.search(line)
    if op is None:
      continue
    result, kind = op.groups()
    arrays = _ARRAY.findall(result)
    sizes = [int(np.prod([int(d) for d in dims.split(",") if d])) for _, dims in arrays]
    widths = [1 if dtype == "pred" else max(int(re.sub(r"\D", "", dtype)) // 8, 1)
              for dtype, _ in arrays]
    found.append(Collective(
        kind=kind,
        shapes=tuple(f"{dtype}[{dims}]" for dtype, dims in arrays),
        elements=int(sum(sizes)),
        bytes=int(sum(n * w for n, w in zip(sizes, widths))),
        computation=computation,
    ))
  return found
