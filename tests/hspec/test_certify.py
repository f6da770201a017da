"""The Weyl certificate of a reduced operator, against dense eigvalsh of prescribed matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hspec
from hspec import certify


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _sym(rng, n, scale):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q @ np.diag(scale) @ q.T


def test_spectral_norm_of_an_indefinite_matrix_equals_eigvalsh():
    rng = np.random.default_rng(0)
    n = 60
    E = _sym(rng, n, np.r_[-3.0, np.linspace(-1, 2, n - 1)])  # the norm sits at the negative end
    op = hspec.MatvecOperator(lambda V: V @ jnp.asarray(E), n, jnp.float64)
    est = certify.spectral_norm(op, key=jax.random.key(1), num_steps=40, scale=0.5)
    assert est.norm == pytest.approx(0.5 * 3.0, rel=1e-8)
    assert est.lambda_min == pytest.approx(-1.5, rel=1e-8) and est.lambda_max == pytest.approx(1.0, rel=1e-8)
    # a negative scale swaps the ends
    neg = certify.spectral_norm(op, key=jax.random.key(1), num_steps=40, scale=-1.0)
    assert neg.lambda_max == pytest.approx(3.0, rel=1e-8) and neg.lambda_min == pytest.approx(-2.0, rel=1e-8)


def test_weyl_bound_holds_for_a_kept_plus_dropped_split():
    rng = np.random.default_rng(2)
    n, k = 80, 20
    A = _sym(rng, n, np.sort(1.0 / np.arange(1, n + 1) ** 1.1)[::-1])  # a power-law "kept" part
    E = 1e-4 * _sym(rng, n, rng.standard_normal(n))                     # a small indefinite "dropped" part
    exact = np.linalg.eigvalsh(A + E)[::-1][:k]
    kept = np.linalg.eigvalsh(A)[::-1][:k]
    op = hspec.MatvecOperator(lambda V: V @ jnp.asarray(E), n, jnp.float64)
    est = certify.spectral_norm(op, key=jax.random.key(3), num_steps=n)
    assert est.norm == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(E))), rel=1e-8)
    assert np.max(np.abs(exact - kept)) <= est.norm
    cert = certify.weyl_certificate(est, kept, k, tolerance=1e-2)
    assert cert["lambda_k"] == pytest.approx(kept[k - 1])
    assert cert["relative_bound"] == pytest.approx(est.norm / kept[k - 1])
    assert cert["accepted"] == (est.norm <= 1e-2 * kept[k - 1])
    assert certify.weyl_certificate(est, kept, k, tolerance=1e-9)["accepted"] is False
    with pytest.raises(ValueError, match="eigenvalues given for k"):
        certify.weyl_certificate(est, kept[:5], k)
