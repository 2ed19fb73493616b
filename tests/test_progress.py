"""benchmarks/progress.py: bars in logs redraw rarely, one line per redraw."""

import io
import itertools

import pytest

tqdm_std = pytest.importorskip("tqdm.std")

from benchmarks import progress as progress_lib  # noqa: E402

STEPS = 600  # one simulated second each: ten minutes of a run


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def clock(monkeypatch):
  """tqdm's clock advances one second per reading, so no test waits."""
  ticks = itertools.count(0.0, 1.0)
  monkeypatch.setattr(tqdm_std, "time", lambda: next(ticks))
  monkeypatch.setattr(tqdm_std.tqdm, "monitor_interval", 0)  # no monitor thread


def _run(stream, **kwargs):
  bar = progress_lib.progress(total=STEPS, file=stream, desc="train", **kwargs)
  for _ in range(STEPS):
    bar.update(1)
  bar.close()
  return stream.getvalue()


def test_off_a_terminal_a_bar_writes_a_line_per_half_minute_not_per_update(clock):
  log = _run(io.StringIO())
  lines = log.splitlines()
  assert "\r" not in log
  assert 2 <= len(lines) <= STEPS // 30 + 3  # first draw, one per 30 s, the final one
  assert all(line.startswith("train:") for line in lines)
  assert f"{STEPS}/{STEPS}" in lines[-1]
  assert log.isascii()


def test_on_a_terminal_the_bar_is_tqdm_as_usual(clock):
  screen = _run(_Terminal())
  assert screen.count("\r") > STEPS // 10  # redrawn in place, often


def test_explicit_settings_win_over_the_log_defaults(clock):
  log = _run(io.StringIO(), mininterval=0.0, miniters=1)
  assert len(log.splitlines()) > STEPS // 2


def test_a_closed_or_bare_stream_counts_as_no_terminal():
  closed = io.StringIO()
  closed.close()
  assert not progress_lib.is_terminal(closed)
  assert not progress_lib.is_terminal(object())
  assert progress_lib.is_terminal(_Terminal())
