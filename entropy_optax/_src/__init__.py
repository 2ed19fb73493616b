"""Private implementation modules of entropy_optax; import from the package."""
