"""jaxtl: transfer learning in JAX/Flax with layer freezing as a first-class, measured object.

Subpackages, from the bottom up (each imports only the ones above it in this list):

* ``jaxtl.freeze`` -- select, plan and apply freezing over any parameter pytree (jax/optax only);
* ``jaxtl.models`` and ``jaxtl.data`` -- Linen models with layer groups; datasets and A->B tasks;
* ``jaxtl.train`` -- jit-compiled steps, strategies, transfer from A, checkpoints, the runner;
* ``jaxtl.adapters`` and ``jaxtl.fine_tuning`` -- your own Linen/NNX model through the engine:
  ``jaxtl.fine_tune(model, variables, (x, y), "linear_probe")``;
* ``jaxtl.report`` -- results files to a Markdown report with plots and an answer.
"""

__version__ = "0.1.0"

# Imported on first use, so that `from jaxtl import freeze` stays free of flax.
_LAZY = {
    "fine_tune": "jaxtl.fine_tuning",
    "FineTuneConfig": "jaxtl.fine_tuning",
    "FineTuneResult": "jaxtl.fine_tuning",
}


def __getattr__(name: str) -> object:
    """``jaxtl.fine_tune`` and its config/result classes, imported when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxtl' has no attribute {name!r}")
