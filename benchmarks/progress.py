"""Progress bars that stay readable when the output is a log, not a terminal.

Every script's bar goes through :func:`progress`. On a terminal it is tqdm as usual. Elsewhere
(CI logs, ``make demo > log``) a bar redraws at most every ``LOG_INTERVAL`` seconds, in ASCII,
and each redraw is one line of its own instead of a carriage return, so a log holds a line
every half minute rather than one per update.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional, TextIO

LOG_INTERVAL = 30.0


class _Lines:
  """A stream for tqdm that writes each redraw of a bar as one line."""

  def __init__(self, stream: TextIO):
    self._stream = stream
    self._last = ""

  def write(self, text: str) -> int:
    # tqdm draws "\r" + bar (padded with spaces over the previous one), and "\n" on close.
    for part in text.replace("\n", "\r").split("\r"):
      line = part.rstrip()
      if line and line != self._last:  # close() redraws the final state once more
        self._stream.write(line + "\n")
        self._last = line
    return len(text)

  def flush(self) -> None:
    self._stream.flush()

  def isatty(self) -> bool:
    return False


def is_terminal(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


def progress(iterable: Optional[Iterable[Any]] = None, *, file: Optional[TextIO] = None,
             interval: float = LOG_INTERVAL, **kwargs: Any) -> Any:
  """``tqdm(iterable, file=file, **kwargs)``, throttled to one line per ``interval`` s off a tty.

  ``file`` defaults to ``sys.stderr``, as in tqdm. Keyword arguments given explicitly (say
  ``mininterval``) win over the log settings.
  """
  from tqdm import tqdm

  stream = sys.stderr if file is None else file
  if not is_terminal(stream):
    kwargs.setdefault("mininterval", interval)
    # maxinterval bounds the gap tqdm's monitor thread allows between redraws: not below ours.
    kwargs.setdefault("maxinterval", max(interval, kwargs["mininterval"]))
    kwargs.setdefault("ascii", True)
    stream = _Lines(stream)
  return tqdm(iterable, file=stream, **kwargs)
