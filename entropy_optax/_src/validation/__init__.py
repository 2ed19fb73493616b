"""Checks of what the user passes: hyperparameters, update arguments, states.

Every check of the package lives here, in one submodule per moment it runs:

* :mod:`.hyperparams`, at construction: the factories' arguments, concrete
  numbers only (traced values and schedules are accepted as they are).
* :mod:`.update_args`, at ``update``: shapes, structures and dtypes of the
  call's arguments and state, static under ``jit``, and the structures the
  package is handed (never other libraries' frames or private names).
* :mod:`.run_time`, when the step runs: the few values only a running step
  knows, through :func:`refuse_unless`, which raises at once outside ``jit``
  and, inside it, from a host callback.

Wrong types raise ``TypeError``, wrong values and shapes ``ValueError``. The
rest of the package calls them as ``validation.<check>``.
"""

from entropy_optax._src.validation.hyperparams import check_bool
from entropy_optax._src.validation.hyperparams import check_choice
from entropy_optax._src.validation.hyperparams import check_fraction
from entropy_optax._src.validation.hyperparams import check_inner_steps
from entropy_optax._src.validation.hyperparams import check_local_entropy_args
from entropy_optax._src.validation.hyperparams import check_non_negative
from entropy_optax._src.validation.hyperparams import check_positive
from entropy_optax._src.validation.hyperparams import check_positive_int
from entropy_optax._src.validation.hyperparams import check_transform
from entropy_optax._src.validation.hyperparams import check_unit_interval
from entropy_optax._src.validation.hyperparams import check_unroll
from entropy_optax._src.validation.hyperparams import concrete_value
from entropy_optax._src.validation.hyperparams import is_static_zero
from entropy_optax._src.validation.run_time import check_at_anchor
from entropy_optax._src.validation.run_time import check_not_mid_loop
from entropy_optax._src.validation.run_time import refuse_unless
from entropy_optax._src.validation.update_args import BatchCountError
from entropy_optax._src.validation.update_args import UNTRANSFORMED_GRADS
from entropy_optax._src.validation.update_args import check_batches
from entropy_optax._src.validation.update_args import check_floating
from entropy_optax._src.validation.update_args import check_full_params
from entropy_optax._src.validation.update_args import check_fused_composition
from entropy_optax._src.validation.update_args import check_fused_inner_steps
from entropy_optax._src.validation.update_args import check_grad_fn_output
from entropy_optax._src.validation.update_args import check_grad_fn_pair
from entropy_optax._src.validation.update_args import check_like_params
from entropy_optax._src.validation.update_args import check_minibatch_axis
from entropy_optax._src.validation.update_args import check_mode_args
from entropy_optax._src.validation.update_args import check_params_given
from entropy_optax._src.validation.update_args import check_replicated
from entropy_optax._src.validation.update_args import check_state_fits
from entropy_optax._src.validation.update_args import check_state_matches
from entropy_optax._src.validation.update_args import check_untransformed

__all__ = (
    "UNTRANSFORMED_GRADS",
    "BatchCountError",
    "check_at_anchor",
    "check_batches",
    "check_bool",
    "check_choice",
    "check_floating",
    "check_fraction",
    "check_full_params",
    "check_fused_composition",
    "check_fused_inner_steps",
    "check_grad_fn_output",
    "check_grad_fn_pair",
    "check_inner_steps",
    "check_like_params",
    "check_local_entropy_args",
    "check_minibatch_axis",
    "check_mode_args",
    "check_non_negative",
    "check_not_mid_loop",
    "check_params_given",
    "check_positive",
    "check_positive_int",
    "check_replicated",
    "check_state_fits",
    "check_state_matches",
    "check_transform",
    "check_unit_interval",
    "check_unroll",
    "check_untransformed",
    "concrete_value",
    "is_static_zero",
    "refuse_unless",
)
