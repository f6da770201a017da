import warnings

import numpy as np
import powerlaw
import pytest

import hspec


def package_fit(eigs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return powerlaw.Fit(eigs, xmin=eigs.min(), verbose=False).power_law


SPECTRA = {
    "zipf": 1.0 / np.arange(1, 1001),
    "exponential": np.exp(-np.arange(1, 1001) / 200),
    "pareto": np.random.default_rng(0).pareto(1.5, 700) + 1.0,
    "lognormal": np.random.default_rng(1).lognormal(size=300),
    "ties": np.repeat([4.0, 2.0, 1.0, 0.5], 25),
}


@pytest.mark.parametrize("name", sorted(SPECTRA))
def test_matches_powerlaw_package(name):
    eigs = SPECTRA[name]
    fit = hspec.fit_power_law(eigs)
    ref = package_fit(eigs)
    assert fit.beta == pytest.approx(ref.alpha, rel=1e-10, abs=1e-10)
    assert fit.sigma == pytest.approx(ref.sigma, rel=1e-10, abs=1e-10)
    assert fit.d_ks == pytest.approx(ref.D, rel=1e-10, abs=1e-10)


def test_matches_package_on_a_real_spectrum():
    """A heavy-tailed spectrum (|Cauchy| draws, sorted), fitted at K = 60: the package agrees to rounding."""
    rng = np.random.default_rng(5)
    eigs = np.sort(np.abs(rng.standard_cauchy(100)) + 1e-3)[::-1]
    fit, ref = hspec.fit_power_law(eigs, k=60), package_fit(eigs[:60])
    assert (fit.beta, fit.d_ks) == pytest.approx((ref.alpha, ref.D), rel=1e-10)


def test_sanity_values_from_method():
    zipf = hspec.fit_power_law(1.0 / np.arange(1, 1001))
    assert (round(zipf.beta, 4), round(zipf.s, 4), round(zipf.d_ks, 4)) == (2.0044, 0.9956, 0.0016)
    assert zipf.is_power_law and zipf.d_crit == pytest.approx(1.36 / np.sqrt(1000))
    expo = hspec.fit_power_law(np.exp(-np.arange(1, 1001) / 200))
    assert round(expo.d_ks, 3) == 0.154 and not expo.is_power_law


def test_closed_forms():
    eigs = np.array([8.0, 4.0, 2.0, 1.0])
    fit = hspec.fit_power_law(eigs)
    beta = 1 + 4 / (np.log(8) + np.log(4) + np.log(2))
    assert fit.beta == pytest.approx(beta, rel=1e-14)
    assert fit.sigma == pytest.approx((beta - 1) / 2, rel=1e-14)
    assert fit.s == pytest.approx(1 / (beta - 1), rel=1e-14)
    assert fit.lsq_slope == pytest.approx(np.polyfit(np.log([1, 2, 3, 4]), -np.log(eigs), 1)[0], rel=1e-12)


def test_k_selects_top_values_in_any_order():
    eigs = np.random.default_rng(2).permutation(1.0 / np.arange(1, 501))
    assert hspec.fit_power_law(eigs, k=100).beta == pytest.approx(hspec.fit_power_law(1.0 / np.arange(1, 101)).beta)


@pytest.mark.parametrize("alpha,c", [(0.2, 1.07), (0.15, 1.14), (0.1, 1.22), (0.05, 1.36), (0.01, 1.63)])
def test_critical_values(alpha, c):
    assert hspec.critical_value(400, alpha) == pytest.approx(c / 20)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        hspec.fit_power_law([1.0, 0.5], k=1)
    with pytest.raises(ValueError, match="larger than the 3 eigenvalues"):
        hspec.fit_power_law([3.0, 2.0, 1.0], k=4)
    with pytest.raises(ValueError, match="2 of the top 4 eigenvalues are <= 0"):
        hspec.fit_power_law([3.0, 2.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="1 of 3 eigenvalues are NaN"):
        hspec.fit_power_law([3.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="no tabulated KS coefficient"):
        hspec.fit_power_law([3.0, 2.0, 1.0], significance=0.03)
    fit = hspec.fit_power_law([3.0, 2.0, 1.0, 0.0, -1.0], drop_nonpositive=True)
    assert fit.k == 3 and fit.num_dropped == 2


def test_verdict_with_nonpositive_values():
    eigs = np.concatenate([1.0 / np.arange(1, 91), -np.ones(10)])
    v = hspec.power_law_verdict(eigs, k=100)
    assert not v.is_power_law and v.fit is None and v.num_positive == 90
    assert "non-positive eigenvalues among the top K: 10 of 100" in v.verdict
    assert v.positive_fit.k == 90 and v.positive_fit.beta == pytest.approx(hspec.fit_power_law(eigs[:90]).beta)
    ok = hspec.power_law_verdict(1.0 / np.arange(1, 1001))
    assert ok.is_power_law and ok.verdict.startswith("power law")


def test_ensemble_error_bars():
    spectra = [1.0 / np.arange(1, 201) ** p for p in (0.9, 1.0, 1.1)]
    ens = hspec.fit_power_law_ensemble(spectra)
    s = np.array([hspec.fit_power_law(x).s for x in spectra])
    assert ens.s_mean == pytest.approx(s.mean()) and ens.s_std == pytest.approx(s.std(ddof=1))
    assert ens.s_sem == pytest.approx(s.std(ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="at least 2 spectra"):
        hspec.fit_power_law_ensemble(spectra[:1])


def test_eigengap_exponent_near_s_plus_one():
    """For λ_k = k^-s, δ_k ≈ s k^-(s+1): the gap fit's exponent is near ŝ + 1."""
    eigs = 1.0 / np.arange(1, 1001) ** 0.8
    gaps = hspec.fit_eigengaps(eigs)
    np.testing.assert_allclose(hspec.eigengaps(eigs), eigs[:-1] - eigs[1:])
    assert gaps.s == pytest.approx(hspec.fit_power_law(eigs).s + 1, abs=0.1)


def test_verdict_with_fewer_than_two_positive_values_is_defined():
    # One positive value among the top 5: no power law, no secondary fit, no exception.
    v = hspec.power_law_verdict(np.array([1.0, -0.1, -0.2, -0.3, -0.4]), 5)
    assert not v.is_power_law and v.num_positive == 1 and v.fit is None and v.positive_fit is None
    assert "non-positive eigenvalues among the top K: 4 of 5" in v.verdict
    with pytest.raises(ValueError, match="NaN or infinite"):
        hspec.power_law_verdict(np.array([1.0, np.nan, -0.2]), 3)
    with pytest.raises(ValueError, match="k=1"):
        hspec.power_law_verdict(np.array([1.0, -0.5]), 1)


def test_ks_deviations_place_the_largest_one_at_its_rank_and_give_d_ks():
    """Written out for each rank from the definitions: the empirical CDF below rank r is (K − r)/K (no ties), the
    fitted one 1 − (λ_r/λ_K)^(1−β)."""
    from hspec.powerlaw import ks_deviations

    eigs = np.sort(np.random.default_rng(3).pareto(1.5, 50) + 1.0)[::-1]
    fit = hspec.fit_power_law(eigs, k=50)
    dev = ks_deviations(eigs, fit.beta)
    by_hand = [abs((1.0 - (eigs[r] / eigs[-1]) ** (1.0 - fit.beta)) - (49 - r) / 50) for r in range(50)]
    assert dev == pytest.approx(by_hand, rel=1e-12, abs=1e-15)
    assert dev.max() == pytest.approx(fit.d_ks, rel=1e-12)
