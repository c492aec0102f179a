"""jaxtl: transfer learning in JAX/Flax with layer freezing as a first-class, measured object.

Subpackages, from the bottom up (each imports only the ones above it in this list):

* ``jaxtl.freeze`` -- select, plan and apply freezing over any parameter pytree (jax/optax only);
* ``jaxtl.models`` and ``jaxtl.data`` -- Linen models with layer groups; datasets and A->B tasks;
* ``jaxtl.train`` -- jit-compiled steps, strategies, transfer from A, checkpoints, the runner;
* ``jaxtl.report`` -- results files to a Markdown report with plots and an answer.
"""

__version__ = "0.1.0"
