"""Entropy-SGD and Parle on JAX's SPMD engine: 8 simulated CPU devices.

tests/sharding_checks.py measures everything in ONE subprocess (the device
count must be set before jax is imported, and each start costs seconds);
these tests read its JSON and decide.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import pytest

# One subprocess on 8 simulated devices runs every check: make test-slow.
pytestmark = pytest.mark.slow

SCRIPT = pathlib.Path(__file__).resolve().parent / "sharding_checks.py"
# float32 gradients summed over 8 batch shards in another order: a few ulps.
CROSS_SHARD_ATOL = 1e-6


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                        text=True, timeout=600)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  return json.loads(lines[0][len("RESULTS "):])


def _moves_arrays(op):
  return op["elements"] > len(op["shapes"])


def _multiset(ops):
  return collections.Counter((op["kind"], tuple(op["shapes"])) for op in ops)


def _array_collectives(ops):
  """The collectives that move arrays, as a multiset of (kind, shapes)."""
  return _multiset(op for op in ops if _moves_arrays(op))


def _scalar_collectives(ops):
  return [op for op in ops if not _moves_arrays(op)]


@pytest.mark.parametrize("mode", ["fused", "interleaved"])
def test_fsdp_params_and_data_parallel_batches_give_the_single_device_numbers(results, mode):
  # The noise (eps = 1e-2) moves every weight by ~1e-3 per step: a noise that
  # changed with the sharding could not hide under this tolerance.
  assert results["entropy_sgd"][mode]["max_diff"] <= CROSS_SHARD_ATOL


@pytest.mark.parametrize("mode", ["fused", "interleaved"])
def test_state_leaves_follow_their_params_fsdp_sharding(results, mode):
  checks = results["entropy_sgd"][mode]
  for field, specs in checks["specs"].items():
    assert specs == results["entropy_sgd"]["expected_specs"], field


def test_noise_is_bitwise_independent_of_the_sharding_for_every_generator(results):
  for generator, noise in results["entropy_sgd"]["noise"].items():
    assert noise["same_bits"], (generator, noise["max_diff"])
  assert results["explicit"]["same_bits"], results["explicit"]["max_diff"]


def test_each_device_draws_only_its_shards_noise_under_automatic_sharding(results):
  for generator, noise in results["entropy_sgd"]["noise"].items():
    assert not noise["full_size_random_bits"], generator


def test_state_leaves_follow_their_params_sharding_under_explicit_sharding(results):
  for field, specs in results["explicit"]["specs"].items():
    assert specs == results["entropy_sgd"]["expected_specs"], field


def test_each_device_draws_only_its_shards_noise_under_explicit_sharding(results):
  assert not results["explicit"]["full_size_random_bits"]


@pytest.mark.parametrize("mode", ["fused", "interleaved"])
def test_entropy_sgd_adds_no_collective_to_the_gradients_only_scalar_checks(results, mode):
  checks = results["entropy_sgd"][mode]
  ops, baseline = checks["collectives"], checks["baseline_collectives"]
  # Every array all-gather / all-reduce is the gradient's own (FSDP gathers
  # the params, data parallelism sums the gradients), as in plain SGD.
  assert _array_collectives(ops) == _array_collectives(baseline)
  # The additions are scalar all-reduces only: the per-leaf "all finite" flags
  # that decide, identically on every device, whether to abandon the outer
  # step (step-interleaved mode has one in each branch of its
  # Langevin-or-outer-step cond, of which one runs per call), and since 0.3
  # the check that params sit on the stored anchor: per leaf, the largest
  # |params - anchor|, the largest |anchor| and whether each of the two holds
  # a non-finite value (four f32 maxima).
  assert not _scalar_collectives(baseline)
  extra = _scalar_collectives(ops)
  flags = [op for op in extra if all(s.startswith("pred[") for s in op["shapes"])]
  anchor = [op for op in extra if all(s == "f32[]" for s in op["shapes"])]
  assert len(flags) + len(anchor) == len(extra), extra
  assert all(op["kind"] == "all-reduce" for op in extra), extra
  assert 1 <= len(flags) <= (1 if mode == "fused" else 2), flags
  assert len(anchor) == 1 and len(anchor[0]["shapes"]) % 4 == 0, anchor
  assert len({op["computation"] for op in flags}) == len(flags), flags


def test_parle_over_a_replica_mesh_axis_gives_the_single_device_vmap_numbers(results):
  parle = results["parle"]
  assert parle["max_diff"] <= CROSS_SHARD_ATOL
  assert parle["reference_max_diff"] <= CROSS_SHARD_ATOL


def test_parle_state_keeps_the_replica_sharding_and_the_reference_one_replicas(results):
  parle = results["parle"]
  assert parle["param_specs"] == parle["expected_param_specs"]
  assert parle["anchor_specs"] == parle["expected_param_specs"]
  assert parle["reference_specs"] == parle["expected_reference_specs"]


def test_parle_adds_one_all_reduce_of_one_replicas_shard_per_outer_step(results):
  parle = results["parle"]
  added = _array_collectives(parle["collectives"]) - _array_collectives(
      parle["baseline_collectives"]
  )
  assert _array_collectives(parle["baseline_collectives"]) - _array_collectives(
      parle["collectives"]
  ) == collections.Counter()
  assert sum(added.values()) == 1, added
  [op] = [op for op in parle["collectives"] if (op["kind"], tuple(op["shapes"])) in added]
  assert op["kind"] == "all-reduce"
  assert op["elements"] == parle["reference_shard_elements"]
  # Plus one all-reduce of bools: whether any replica abandons the outer step
  # (then all do), and since 0.3 each replica's flag of the checks that reach
  # the user (params on the anchor, a fused call between outer steps).
  extra_scalars = _multiset(_scalar_collectives(parle["collectives"])) - _multiset(
      _scalar_collectives(parle["baseline_collectives"]))
  assert sum(extra_scalars.values()) == 1, extra_scalars
  [(kind, shapes)] = extra_scalars
  assert kind == "all-reduce" and all(s in ("pred[]", "pred[1]") for s in shapes), shapes
  # XLA may merge the baseline's own flag all-reduce into that one: nothing else goes.
  gone = _multiset(_scalar_collectives(parle["baseline_collectives"])) - _multiset(
      _scalar_collectives(parle["collectives"]))
  assert sum(gone.values()) <= 1, gone
  for kind, shapes in gone:
    assert kind == "all-reduce" and all(s.startswith("pred[") for s in shapes), gone
