"""Tolerances for float32 parity with the official outputs that hold on any CPU.

The official float32 arrays carry their machine's rounding. In near-silent bins of
tonal inputs the FFT's rounding changes the log-mel by up to 0.28 dB, and it differs
between CPUs: on an AVX-512 Xeon, our float32 and the official float32 disagree by
more than either is off the exact (float64) result. So float32 results are held to
the exact result, within a floor plus a multiple of the official float32 result's
own error. Float64 results must match the official float64 arrays almost exactly,
which pins the function itself.
"""

from __future__ import annotations

import copy

import numpy as np

from auricle.models.ced import CED

#: How far off the exact result our float32 may be, in units of the official float32 error.
#: Observed 0.7-1.5 across the reference inputs (Zen 3, Zen 4 and an AVX-512 Xeon).
ROUNDING_FACTOR = 3.0
#: Our float64 against the official float64 (observed up to 2e-10).
FLOAT64_TOLERANCE = 1e-8


def assert_as_accurate_as_official(ours, official, exact, floor: float, label: str = "") -> None:
    """``ours`` is within ``floor`` + ROUNDING_FACTOR x |official - exact| of ``exact``, elementwise at most."""
    ours, official, exact = (np.asarray(a, dtype=np.float64) for a in (ours, official, exact))
    assert ours.shape == exact.shape == official.shape, label
    official_error = np.abs(official - exact).max()
    np.testing.assert_allclose(ours, exact, atol=floor + ROUNDING_FACTOR * official_error, rtol=0,
                               err_msg=f"{label} (official float32 error {official_error:.2e})")


def float64_copy(network: CED) -> CED:
    """The same network computing in float64: the exact function, for measuring rounding."""
    return copy.deepcopy(network).double().eval()
