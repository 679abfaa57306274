"""Recordings written for tests that several test folders share."""

from __future__ import annotations

import numpy as np
import soundfile as sf


def write_broken_midway(path):
    """90 s of noise, then a second of NaN: a file that decodes and then breaks."""
    rng = np.random.default_rng(4)
    samples = np.concatenate([0.1 * rng.standard_normal(90 * 16000), np.full(16000, np.nan)]).astype(np.float32)
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path
