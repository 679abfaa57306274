"""Releasing a mapped checkpoint's pages is advice only: every value survives, plain memory is left alone."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from auricle.engines.pages import release_file_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux's")


def test_mapped_weights_are_advised_and_keep_their_values(tmp_path):
    generator = torch.Generator().manual_seed(0)
    saved = {"a": torch.randn(512, 256, generator=generator), "b": torch.randn(300, 70, generator=generator),
             "c": torch.randn(3)}
    save_file(saved, tmp_path / "w.safetensors")
    mapped = load_file(tmp_path / "w.safetensors")  # memory-mapped, as auricle loads checkpoints
    with torch.no_grad():
        mapped["b"].mul_(2.0)  # written to: a copy-on-write page that must not fall back to the file's values
    advised = release_file_pages(mapped.values())
    assert advised >= (512 * 256 * 4) // 4096 * 4096 - 4096  # "a": all but its partial edge pages
    torch.testing.assert_close(mapped["a"], saved["a"], rtol=0, atol=0)
    torch.testing.assert_close(mapped["b"], saved["b"] * 2.0, rtol=0, atol=0)
    torch.testing.assert_close(mapped["c"], saved["c"], rtol=0, atol=0)


def test_plain_memory_and_views_are_left_alone():
    plain = torch.randn(1024, 1024)
    assert release_file_pages([plain, plain.t(), torch.empty(0)]) == 0
