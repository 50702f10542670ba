"""Detectors of model-stealing accounts. Framework-free.

Each module implements one published detector on plain numpy arrays:

- :mod:`.prada`: PRADA (Juuti et al., EuroS&P 2019), the Shapiro–Wilk W of
  each account's minimum distances to its earlier queries of the same class;
- :mod:`.frechet`: the squared Fréchet distance between Gaussians, the core of
  ADD / D-ADD (Mei et al.), with a square root that is sound for symmetric
  PSD and rank-deficient covariance matrices.

:mod:`.registry` is the one table of detector kinds and the one reading of
their evidence (score over threshold) in an evaluation's scores.
"""

from .frechet import frechet_distance, sqrtm_psd
from .prada import Prada

__all__ = ["Prada", "frechet_distance", "sqrtm_psd"]
