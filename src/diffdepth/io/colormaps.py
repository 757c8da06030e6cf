"""Colour maps written from their published definitions (no matplotlib needed).

Each map takes ``t`` in ``[0,1]`` (any shape) and returns float RGB in ``[0,1]`` with a
trailing axis of 3. :data:`WARM_END` says which end of each map is warm (red), so callers
can draw "near = warm" whatever the map.

* ``spectral``: ColorBrewer "Spectral", 11-class diverging scheme (Cynthia Brewer,
  colorbrewer2.org), control colours at ``t = i/10`` from dark red (t=0) to purple (t=1),
  piecewise linear between them.
* ``turbo``: Google's Turbo map (design: A. Mikhailov, 2019) through its published
  degree-5 polynomial approximation per channel (R. Du, Google, 2019; coefficients are
  facts of that publication), dark blue (t=0) to dark red (t=1).
* ``gray``: black (t=0) to white (t=1); its "warm" (bright) end is white.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

#: ColorBrewer Spectral, 11 classes, as published (hex #9e0142 ... #5e4fa2)
SPECTRAL_11 = np.array([
    [158, 1, 66], [213, 62, 79], [244, 109, 67], [253, 174, 97], [254, 224, 139],
    [255, 255, 191], [230, 245, 152], [171, 221, 164], [102, 194, 165], [50, 136, 189],
    [94, 79, 162],
], dtype=np.float64) / 255.0

# Turbo polynomial approximation coefficients for t^0..t^5 per channel (R, G, B)
_TURBO_COEFFS = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def _piecewise_linear(control: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    n = len(control)
    xs = np.linspace(0.0, 1.0, n)

    def cmap(t: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
        return np.stack([np.interp(t, xs, control[:, c]) for c in range(3)], axis=-1)

    return cmap


def turbo(t: np.ndarray) -> np.ndarray:
    """Turbo via the polynomial approximation: channel = sum_k c_k t^k, k = 0..5, clipped."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([t ** k for k in range(6)], axis=-1)  # [...,6]
    return np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)  # [...,3]


def gray(t: np.ndarray) -> np.ndarray:
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    return np.repeat(t[..., None], 3, axis=-1)


COLORMAPS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "spectral": _piecewise_linear(SPECTRAL_11),
    "turbo": turbo,
    "gray": gray,
}
#: the value of t at which each map is warm (red) / bright
WARM_END: Dict[str, float] = {"spectral": 0.0, "turbo": 1.0, "gray": 1.0}
