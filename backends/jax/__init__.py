"""JAX adapter (jit, jax.vjp) and the model code it runs."""
