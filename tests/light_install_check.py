"""Check a core install (`pip install .`, no extras): hspec imports and computes without the training stack.

Run by .ci/run in a venv of its own, as ``python -I tests/light_install_check.py`` from outside the
repository, so that ``import hspec`` finds the installed package (not the checkout, nor tests/hspec).
Not collected by pytest: the normal suite has its own import test (tests/hspec/test_imports.py).
"""

import importlib.util
import sys

import numpy as np

TRAINING_STACK = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "matplotlib", "chex", "powerlaw")


def check_light_environment() -> None:
    """The venv really is light: none of the training stack is even installed."""
    installed = [m for m in TRAINING_STACK if importlib.util.find_spec(m) is not None]
    assert not installed, f"the core install pulled in {installed}"


def check_import() -> None:
    """``import hspec`` loads the installed package and none of the training stack."""
    import hspec

    assert "site-packages" in (hspec.__file__ or ""), f"imported hspec from {hspec.__file__}, not the install"
    loaded = [m for m in TRAINING_STACK if m in sys.modules]
    assert not loaded, f"import hspec loaded {loaded}"


def check_top_eigenvalues() -> None:
    """The top 4 of a tiny tanh network's Hessian (float64) equal eigvalsh of its dense Hessian."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    import hspec

    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (16, 3), jnp.float64)
    params = {"w1": jax.random.normal(kw, (3, 4), jnp.float64), "w2": jnp.linspace(-1.0, 1.0, 4)}

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - x[:, 0]) ** 2)

    flat, unravel = ravel_pytree(params)
    dense = np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat))
    top = hspec.top_eigenvalues(loss, params, 4, key=jax.random.key(1), num_steps=flat.size)
    expected = np.linalg.eigvalsh(dense)[::-1][:4]
    error = float(np.max(np.abs(top.eigenvalues - expected)))
    assert error < 1e-5, (top.eigenvalues, expected)
    print(f"light install: hspec {hspec.__version__} from {hspec.__file__}; top 4 within {error:.1e} of eigvalsh")


if __name__ == "__main__":
    check_light_environment()
    check_import()
    check_top_eigenvalues()
