"""Building a Dasheng model from a checkpoint: the checkpoint's tensors become the weights (no second
copy, float32), and building on the meta device imports nothing heavy (cold start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from auricle.models.checkpoints import Checkpoint
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_checkpoints import build_dasheng
from auricle.models.dasheng_config import SIZES

SRC = Path(__file__).resolve().parents[2] / "src"


def small_checkpoint(dtype: torch.dtype = torch.float32) -> Checkpoint:
    torch.manual_seed(0)
    state = {key: value.to(dtype) if value.is_floating_point() else value
             for key, value in Dasheng(SIZES["small"]).state_dict().items()}
    return Checkpoint(state, SIZES["small"], "auricle", "small.safetensors")


def test_the_model_takes_the_checkpoints_tensors_without_a_copy():
    checkpoint = small_checkpoint()
    model = build_dasheng(checkpoint)
    for key, tensor in model.state_dict().items():
        assert tensor.data_ptr() == checkpoint.state_dict[key].data_ptr(), key
    assert all(parameter.requires_grad for parameter in model.parameters())  # still trainable
    assert not model.training


def test_half_precision_weights_become_float32():
    checkpoint = small_checkpoint(torch.bfloat16)
    model = build_dasheng(checkpoint)
    weight = model.blocks[0].mlp.fc1.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, checkpoint.state_dict["blocks.0.mlp.fc1.weight"].float(), rtol=0, atol=0)
    assert model.encode(torch.randn(1, 16000) * 0.1).dtype == torch.float32


@pytest.mark.integration
def test_building_on_the_meta_device_imports_neither_sympy_nor_dynamo():
    script = ("import sys; from auricle.models.dasheng import Dasheng; from auricle.models.dasheng_config import SIZES;"
              "Dasheng.meta_state_dict(SIZES['base']); print(sorted({'sympy', 'torch._dynamo'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.stdout.strip() == "[]"
