"""Squared Fréchet (2-Wasserstein) distance between two Gaussians.

    d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₂^½ Σ₁ Σ₂^½)^½)

The matrix square roots are taken by symmetric eigendecomposition with
negative eigenvalues (rounding noise of PSD matrices) clipped to zero, so the
result is real and finite for singular covariances too: an account's window
of a few queries in 64 dimensions has a rank-deficient covariance.
"""

from __future__ import annotations

import numpy as np


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a (numerically) symmetric PSD matrix."""
    sym = (np.asarray(matrix, dtype=np.float64) + np.asarray(matrix, dtype=np.float64).T) / 2.0
    values, vectors = np.linalg.eigh(sym)
    return np.asarray((vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T)


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray, root2: np.ndarray | None = None
) -> float:
    """Squared Fréchet distance between N(mu1, cov1) and N(mu2, cov2); never
    negative. ``root2``, the square root of ``cov2``, may be given when it is
    reused (a reference class compared with many accounts)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.asarray(cov1, dtype=np.float64), np.asarray(cov2, dtype=np.float64)
    if root2 is None:
        root2 = sqrtm_psd(cov2)
    cross = sqrtm_psd(root2 @ cov1 @ root2)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(cross))
    return max(0.0, value)
