"""The log-mel frontend's shortcuts compute what the plain operations compute (parity with the
official frontend itself is in test_parity)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from auricle.frontend import FrontendConfig, LogMel, _filter_groups, _reflect_pad
from conftest import ROOT


@pytest.mark.parametrize("shape", [(257,), (3, 1000), (2, 2, 4000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reflect_padding_is_f_pad_bit_for_bit(shape, dtype):
    signal = torch.randn(*shape, dtype=dtype)
    expected = F.pad(signal.reshape(-1, 1, shape[-1]), (256, 256), mode="reflect").reshape(*shape[:-1], -1)
    assert torch.equal(_reflect_pad(signal, 256), expected)


def test_a_signal_too_short_to_mirror_is_refused_as_f_pad_refuses_it():
    with pytest.raises(RuntimeError):
        _reflect_pad(torch.randn(1, 256), 256)


def dense_power_mel(frontend: LogMel, waveforms: torch.Tensor) -> torch.Tensor:
    padded = F.pad(waveforms.unsqueeze(-2), (256, 256), mode="reflect").squeeze(-2)
    spectrum = torch.stft(padded, 512, 160, 512, window=frontend.window.to(padded.dtype), center=False,
                          return_complex=True)
    power = spectrum.abs().square()
    return torch.matmul(power.transpose(-1, -2), frontend.mel_basis.to(power.dtype)).transpose(-1, -2)


@pytest.mark.parametrize("config", [FrontendConfig(), FrontendConfig(n_mels=128), FrontendConfig(f_max=4000.0),
                                    FrontendConfig(n_mels=200)])
def test_grouped_filterbank_is_the_whole_product(config):
    frontend = LogMel(config)
    basis = frontend.mel_basis
    # Every non-zero weight lies in the bins its group multiplies, and every band is in one group.
    covered = torch.zeros_like(basis, dtype=torch.bool)
    for first_bin, end_bin, first_band, end_band in _filter_groups(basis):
        covered[first_bin:end_bin, first_band:end_band] = True
    assert torch.all(covered[basis != 0])
    bands = [band for _, _, first, end in _filter_groups(basis) for band in range(first, end)]
    assert bands == list(range(config.n_mels))
    waveforms = torch.randn(2, 16000, dtype=torch.float64) * 0.1
    waveforms[1, :8000] = 0  # silence too: zero power in every bin
    torch.testing.assert_close(frontend.power_mel(waveforms), dense_power_mel(frontend, waveforms),
                               rtol=1e-12, atol=1e-300)


@pytest.mark.integration
def test_the_benchmark_times_both_ways_on_the_same_clips(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "frontend.py"), "--rounds", "1", "--calls", "2",
                           "--json", str(tmp_path / "f.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "f.json").read_text())
    assert set(report["rows"]) == {"auricle", "plain"} and all(r["ms_per_clip"] > 0 for r in report["rows"].values())
    assert report["max_abs_difference_db"] < 1e-3
