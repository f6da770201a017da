"""hspec: Hessian spectra of neural networks in JAX, and whether they follow a power law.

Pure functions of a loss ``loss_fn(params) -> scalar`` (or ``loss_fn(params, batch)`` with batches):
Hessian-vector products, Lanczos eigenvalues, spectral density, trace, λ_max, and the power-law fit
with its KS test (Tang et al., ICML 2025; METHOD.md). Every driver also accepts a
:class:`HessianOperator` built once by :func:`hessian_operator`, so that one linearisation of the
gradient serves them all; a :class:`HessianFactory` kept across checkpoints compiles its programs once.
Knows nothing of Flax, optax or training code.

``hspec.lanczos`` is the function; its module is ``hspec.krylov``.
"""

from hspec.density import SpectralDensity, density_from_lanczos, spectral_density
from hspec.eigenvalues import (
    COMBINES,
    NotConvergedError,
    NotConvergedWarning,
    TopEigenvalues,
    default_max_steps,
    default_num_steps,
    distinct_order,
    top_eigenvalues,
)
from hspec.errors import KrylovStateError, NonFiniteError
from hspec.hvp import HessianFactory, HessianOperator, hessian_operator, hoist_constants, hvp, select_parameters
from hspec.krylov import (
    LanczosExecution,
    LanczosResult,
    MatvecOperator,
    SymmetricOperator,
    lanczos,
    tridiagonal_eigh,
)
from hspec.powerlaw import (
    CRITICAL_COEFFICIENTS,
    EnsembleFit,
    PowerLawFit,
    PowerLawVerdict,
    critical_value,
    eigengaps,
    fit_eigengaps,
    fit_power_law,
    fit_power_law_ensemble,
    least_squares_slope,
    power_law_verdict,
)
from hspec import certify, curvature, plot
from hspec.sharpness import PowerIterationResult, power_iteration
from hspec.trace import TraceEstimate, hutchinson_trace

__version__ = "0.1.0"

__all__ = [
    "plot", "certify", "curvature", "COMBINES", "CRITICAL_COEFFICIENTS", "EnsembleFit", "HessianFactory",
    "HessianOperator", "KrylovStateError", "LanczosExecution", "LanczosResult", "MatvecOperator",
    "NonFiniteError", "NotConvergedError", "NotConvergedWarning", "PowerIterationResult", "PowerLawFit",
    "PowerLawVerdict", "SpectralDensity", "SymmetricOperator", "TopEigenvalues", "TraceEstimate",
    "critical_value", "default_max_steps", "default_num_steps", "distinct_order",
    "density_from_lanczos", "eigengaps", "fit_eigengaps", "fit_power_law", "fit_power_law_ensemble",
    "hessian_operator", "hoist_constants", "hutchinson_trace", "hvp", "lanczos", "least_squares_slope",
    "power_iteration", "power_law_verdict", "select_parameters", "spectral_density", "top_eigenvalues",
    "tridiagonal_eigh",
]
