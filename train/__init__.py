"""Training suite for Tang et al. (ICML 2025): data, models, optimizers, loop, presets, the `python -m train` CLI."""

import importlib.util as _util

# The core install is the engine alone (hspec); the training suite needs the `train` extra. Say so at
# once instead of failing later inside an import of flax or optax.
_MISSING = [name for name in ("flax", "optax", "orbax.checkpoint") if _util.find_spec(name.split(".")[0]) is None]
if _MISSING:
    raise ImportError(f"the training suite needs {', '.join(_MISSING)}, which the core install leaves out: "
                      "pip install 'hspec[train]' (or, from a checkout, pip install -e '.[train]')")


def progress_wanted(no_progress: bool) -> bool:
    """Progress bars for a command: unless --no-progress, and only on a terminal (in a log file a bar is a
    stream of redraws, megabytes over a K = 1000 spectrum)."""
    import sys

    return not no_progress and sys.stderr.isatty()
