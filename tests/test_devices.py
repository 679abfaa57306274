"""Devices and training precision (auricle.devices)."""

from __future__ import annotations

import pytest
import torch

from auricle import devices
from auricle.devices import DeviceError, bf16_trains_faster, torch_device, training_bf16
from auricle.inference.tuning import CpuFeatures


def test_devices_this_machine_lacks_are_refused_in_one_line():
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="--device gpu: not a device"):
        torch_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="--device cuda"):
            torch_device("cuda")


@pytest.mark.parametrize("amx, bf16, expected", [(True, True, True), (False, True, True), (False, False, False)])
def test_auto_trains_in_bf16_on_cpus_with_bf16_instructions(monkeypatch, amx, bf16, expected):
    """AMX (Xeon) and avx512_bf16 without AMX (Zen 4) both trained ~1.5-1.9x faster; AVX2 emulates bf16."""
    monkeypatch.setattr(devices, "cpu_features", lambda: CpuFeatures(2, bf16, True, True, amx))
    assert bf16_trains_faster(torch.device("cpu")) is expected
    assert training_bf16("auto", torch.device("cpu")) is expected
    assert training_bf16("bf16", torch.device("cpu")) and not training_bf16("fp32", torch.device("cpu"))


def test_auto_on_gpus_follows_their_bf16_support(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert bf16_trains_faster(torch.device("cuda")) is supported
    assert not bf16_trains_faster(torch.device("meta"))
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        training_bf16("fp16", torch.device("cpu"))
