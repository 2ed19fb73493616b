"""optax's own conformance suite for contributed optimizers, run on ours.

``optax/contrib/_common_test.py`` ships inside the optax wheel. Its
``ContribTest`` is built at import from module-level optimizer lists and looks
the optimizers up by name. We load its source from the INSTALLED optax (no copy
in this repo), insert before ``class ContribTest`` a block that replaces those
lists with our optimizers only and teaches ``_get_opt_factory`` their names, add
``inner_steps`` to the hyperparameters its inject_hyperparams test keeps static
(as optax does for its own static ints ``ns_steps`` and ``rank``), and execute
it into a fresh module. Every text patch asserts that it applied, so an optax
upgrade that moves the text fails here instead of silently testing nothing.

The suite calls ``update`` in step-interleaved mode: each call is one Langevin
step of the walker (the params passed), every ``inner_steps``-th call also
moves the anchor and puts the params on it. Its convergence test runs 30,000
jitted steps, a multiple of every L used here, so the params it checks are the
anchor.

Hyperparameters (one dict per entry, used by every test method):

* L = ``inner_steps=5`` (the paper's char-LSTM value): 6,000 outer steps.
* ``langevin_lr=1e-3``: the Rosenbrock target's curvature reaches ~1000 at its
  minimum and the Langevin steps carry Nesterov momentum 0.9 (the default),
  whose stability limit is eta' * lambda < 2 (1 + beta) / (1 + 2 beta) ~ 1.36.
  At 1e-3 Rosenbrock converges to ~1e-4; at 3e-3 it does not converge.
* ``gamma=0.03``, ``noise=1e-4``, ``mu_decay`` 0.75: the authors' defaults;
  the thermal noise stays on (it is the algorithm; the final error is ~1e-4).
* Entropy-SGD: ``learning_rate=1.0`` (the anchor moves to mu, the authors'
  recipe), without outer momentum (the Lua code) and with Nesterov 0.9 (the
  authors' PyTorch port).
* Entropy-Adam: ``learning_rate=1e-2``; Adam normalises D = x - mu, so each of
  the 6,000 outer steps moves the anchor ~1e-2 (final error ~1e-3; 1e-1 also
  converges, to ~8e-3).
"""

import importlib.util
import re
import sys
import types
import unittest

import optax
import pytest

import entropy_optax

_OPTAX_TEST_MODULE = "optax.contrib._common_test"
_MODULE_NAME = "entropy_optax_optax_conformance"

# Our optimizers, and only ours: optax tests its own.
_OUR_FACTORIES = {
    "entropy_sgd": entropy_optax.entropy_sgd,
    "entropy_adam": entropy_optax.entropy_adam,
}
_LANGEVIN = dict(inner_steps=5, langevin_lr=1e-3, gamma=0.03, noise=1e-4)
OUR_OPTIMIZERS = (
    {"opt_name": "entropy_sgd", "opt_kwargs": dict(learning_rate=1.0, **_LANGEVIN)},
    {
        "opt_name": "entropy_sgd",
        "opt_kwargs": dict(learning_rate=1.0, momentum=0.9, **_LANGEVIN),
    },
    {"opt_name": "entropy_adam", "opt_kwargs": dict(learning_rate=1e-2, **_LANGEVIN)},
)

# Inserted just before `class ContribTest`: the lists the class decorators read
# at class creation, and the factory lookup its test bodies call.
_PRELUDE = '''
# ---- inserted by entropy_optax/tests/test_optax_conformance.py ----
import entropy_optax as _entropy_optax_module
_ENTROPY_OPTAX_FACTORIES = {
    "entropy_sgd": _entropy_optax_module.entropy_sgd,
    "entropy_adam": _entropy_optax_module.entropy_adam,
}
_MAIN_OPTIMIZERS_UNDER_TEST = [
    dict(opt_name=_entry["opt_name"], opt_kwargs=dict(_entry["opt_kwargs"]),
         wrapper_name=None, wrapper_kwargs=None)
    for _entry in _ENTROPY_OPTAX_OPTIMIZERS
]
_OTHER_OPTIMIZERS_UNDER_TEST = []
_ALL_OPTIMIZERS_UNDER_TEST = tuple(
    _MAIN_OPTIMIZERS_UNDER_TEST + _OTHER_OPTIMIZERS_UNDER_TEST
)
_MAIN_OPTIMIZERS_UNDER_TEST = tuple(_MAIN_OPTIMIZERS_UNDER_TEST)


def _get_opt_factory(opt_name):
  """Our optimizers only."""
  if opt_name in _ENTROPY_OPTAX_FACTORIES:
    return _ENTROPY_OPTAX_FACTORIES[opt_name]
  raise ValueError(f'Unknown optimizer: {opt_name}')
# ---- end of insertion ----


'''

_CLASS_LINE = re.compile(r"^class ContribTest\(", re.MULTILINE)
# `for uninjectable_hparam in ['warmup_steps', ..., 'ns_steps', 'rank', ...]:`
_STATIC_HPARAMS = re.compile(
    r"(for\s+uninjectable_hparam\s+in\s+\[)([^\]]*'ns_steps'[^\]]*\]\s*:)"
)


def _patched_source() -> tuple[str, str]:
  spec = importlib.util.find_spec(_OPTAX_TEST_MODULE)
  assert spec is not None and spec.origin, (
      f"{_OPTAX_TEST_MODULE} is not in the installed optax {optax.__version__}"
  )
  with open(spec.origin, encoding="utf-8") as f:
    source = f.read()

  # (c) inner_steps is static, like optax's ns_steps and rank.
  source, n = _STATIC_HPARAMS.subn(r"\1'inner_steps', \2", source)
  assert n == 1, (
      f"{spec.origin}: expected one `for uninjectable_hparam in [...'ns_steps'...]:`"
      f" list, found {n}; the inject_hyperparams patch did not apply"
  )
  # (a), (b): our lists and factory lookup, right before the class.
  matches = list(_CLASS_LINE.finditer(source))
  assert len(matches) == 1, (
      f"{spec.origin}: expected one `class ContribTest(`, found {len(matches)}"
  )
  at = matches[0].start()
  source = source[:at] + _PRELUDE + source[at:]
  return source, spec.origin


def _load() -> types.ModuleType:
  source, origin = _patched_source()
  module = types.ModuleType(_MODULE_NAME)
  module.__file__ = origin
  module._ENTROPY_OPTAX_OPTIMIZERS = OUR_OPTIMIZERS
  sys.modules[_MODULE_NAME] = module
  exec(compile(source, f"{origin} (patched by {__name__})", "exec"), module.__dict__)
  # The patches took: the lists hold our entries only, the lookup finds ours,
  # inner_steps is among the static hyperparameters.
  assert [e["opt_name"] for e in module._ALL_OPTIMIZERS_UNDER_TEST] == [
      e["opt_name"] for e in OUR_OPTIMIZERS
  ]
  assert module._MAIN_OPTIMIZERS_UNDER_TEST == module._ALL_OPTIMIZERS_UNDER_TEST
  for name, factory in _OUR_FACTORIES.items():
    assert module._get_opt_factory(name) is factory
  assert "'inner_steps', " in source
  return module


_conformance = _load()


def _no_skips(self, reason):
  # Every case must run: a skip (e.g. "Optimizer doesn't accept a learning
  # schedule.") is a failure here.
  self.fail(f"optax conformance case skipped: {reason}")


_conformance.ContribTest.skipTest = _no_skips

# pytest collects this absltest (unittest) class.
ContribTest = _conformance.ContribTest
# Its convergence cases run 30,000 jitted steps each: make test-slow.
for _name in unittest.TestLoader().getTestCaseNames(ContribTest):
  if re.fullmatch(r"test_optimizers\d+", _name):
    setattr(ContribTest, _name, pytest.mark.slow(getattr(ContribTest, _name)))

# Cases per entry that each test method of optax 0.2.x generates.
_CASES_PER_ENTRY = {
    "test_optimizers_accept_extra_args": 2,  # wrap in (True, False)
    "test_optimizers": 4,  # four targets, float32
    "test_optimizers_can_be_wrapped_in_inject_hyperparams": 1,
    "test_preserve_dtype": 2,  # bfloat16, float32
    "test_gradient_accumulation": 2,  # bfloat16, float32
    "test_state_shape_dtype_shard_stability": 4,  # f16, bf16, f32, f64
    "test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such": 1,
}


def test_conformance_suite_has_cases_for_each_of_our_optimizers():
  names = unittest.TestLoader().getTestCaseNames(ContribTest)
  reprs = ContribTest._test_params_reprs  # absl: test name -> "(params)"
  assert set(reprs) == set(names), "every collected case is a parameterized one"
  methods = {re.sub(r"\d+$", "", n) for n in names}
  assert methods == set(_CASES_PER_ENTRY), (
      f"optax's ContribTest methods changed: {sorted(methods)}"
  )
  for method, per_entry in _CASES_PER_ENTRY.items():
    cases = [reprs[n] for n in names if re.fullmatch(re.escape(method) + r"\d+", n)]
    for entry in OUR_OPTIMIZERS:
      # The repr names the entry's opt_name and its kwargs (which tell the two
      # entropy_sgd entries apart).
      want = (f"opt_name={entry['opt_name']!r}", f"opt_kwargs={entry['opt_kwargs']!r}")
      hits = [c for c in cases if all(w in c for w in want)]
      assert len(hits) == per_entry, (method, entry, cases)
    assert len(cases) == per_entry * len(OUR_OPTIMIZERS), (method, cases)
  for name in _OUR_FACTORIES:
    assert f"opt_name={name!r}" in " ".join(reprs.values())


def test_learning_rate_is_annotated_so_the_schedule_case_runs():
  # optax's schedule test skips (here: fails) unless learning_rate carries one
  # of these annotations at run time.
  import inspect

  for factory in _OUR_FACTORIES.values():
    annotation = inspect.signature(factory).parameters["learning_rate"].annotation
    assert annotation in (optax.ScalarOrSchedule, optax.Schedule), annotation
