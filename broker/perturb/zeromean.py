"""Zero-mean count noise: for a rate r >= 0 and a scale s >= 0, y = max(0, m + s*z), z ~ N(0, 1),
with m chosen so that E[y] = r exactly.

Clipping Gaussian noise at zero adds spikes (the original's bug: 2.9x the mean rate). Here the
centre m = s * H^-1(r / s) is shifted down just enough that the clipped mean is r again, where
H(u) = E[max(0, u + z)] = u*Phi(u) + phi(u). So E[y | r] = r at every rate: the noise has zero
mean given the clean value, whatever the count. Consequences, stated in docs/perturbations.md:
a rate of 0 stays 0 (a non-negative value with mean 0 is 0), and at small rates the variance is
below s^2 (the distribution is skewed: mostly small, sometimes large values).
H^-1 is a precomputed table; np.interp evaluates it for a whole packet in one call.
"""
from __future__ import annotations

import math

import numpy as np

_U = np.linspace(-8.0, 12.0, 4001)
_PHI = np.exp(-0.5 * _U * _U) / math.sqrt(2 * math.pi)
_CDF = np.array([0.5 * math.erfc(-u / math.sqrt(2)) for u in _U])
_H = _U * _CDF + _PHI                      # increasing: H'(u) = Phi(u) > 0
_SHIFT = _U - _H                           # H^-1(v) - v, tabulated against v = H(u)
assert np.all(np.diff(_H) > 0)
_TINY = 1e-300


def add_noise(rate: np.ndarray, scale: np.ndarray, z: np.ndarray, positive: bool = False) -> np.ndarray:
    """max(0, m + scale*z) with E = rate for each element (rate >= 0; scale 0 leaves rate).
    ``positive``: every scale is > 0 (saves guarding the division). For a 2-D array (packets x
    units) the table is looked up unit by unit: successive values then mostly fall near each
    other in the table, which halves the time of the look-ups (the numbers are the same)."""
    if rate.ndim == 2 and len(rate) > 1:
        by_unit = np.empty(rate.shape[::-1])
        np.divide(rate.T, scale.T if positive else scale.T + _TINY, out=by_unit)
        shift = np.interp(by_unit, _H, _SHIFT).T
    else:
        shift = np.interp(rate / scale if positive else rate / (scale + _TINY), _H, _SHIFT)
    shift += z
    shift *= scale
    shift += rate
    return np.maximum(shift, 0.0, out=shift)


def variance(rate: float, scale: float) -> float:
    """Var(y) for one rate and scale (before rounding to a count), from the same table."""
    if scale <= 0 or rate <= 0:
        return 0.0
    u = float(np.interp(rate / scale, _H, _U))
    cdf = 0.5 * math.erfc(-u / math.sqrt(2))
    pdf = math.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    second = (u * u + 1) * cdf + u * pdf
    return scale * scale * (second - (u * cdf + pdf) ** 2)
