"""The fused oneDNN encoder computes what the CED module computes, and never serves stale weights."""

from __future__ import annotations

import pytest
import torch

import auricle
from auricle.engines.fused import FusedEncoder, fused_supported
from encoder_support import normalised_pieces, perturbed_network

pytestmark = pytest.mark.skipif(not fused_supported(), reason="this torch build has no oneDNN fused linear kernels")


# Both ways of running the fp32 products are checked on every machine, whichever this CPU gets by default.
PRODUCTS = ["onednn", "blas"]


@pytest.mark.integration
@pytest.mark.parametrize("products", PRODUCTS)
@pytest.mark.parametrize("samples,batch", [(160000, 3), (16000, 1), (3000, 2), (400000, 2)])
def test_tokens_match_the_module(samples, batch, products):
    network = perturbed_network()
    pieces = normalised_pieces(network, samples, batch)
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    got = FusedEncoder(network, products=products).forward_features(pieces)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("products", PRODUCTS)
def test_without_qkv_bias(products):
    network = perturbed_network(qkv_bias=False)
    pieces = normalised_pieces(network, 48000, 2)
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    got = FusedEncoder(network, products=products).forward_features(pieces)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# Both ways of running bf16 attention are checked on every machine, whichever this CPU gets by default.
@pytest.mark.integration
@pytest.mark.parametrize("attention", ["sdpa", "products"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("samples,batch", [(160000, 2), (3000, 1), (400000, 1)])
def test_lower_precisions_stay_close_and_return_float32(precision, samples, batch, attention):
    if not fused_supported(precision=precision):
        pytest.skip(f"no fused {precision} kernels in this build or on this CPU")
    network = perturbed_network()
    pieces = normalised_pieces(network, samples, batch)
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    got = FusedEncoder(network, precision, attention=attention).forward_features(pieces)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max() < 0.15  # 8 mantissa bits / 8-bit weights; LayerNorm outputs are O(1)
    assert (got - expected).abs().max() > 1e-4  # and it really ran at lower precision


@pytest.mark.parametrize(("precision", "products"), [("fp32", "onednn"), ("fp32", "blas"), ("int8", None)])
def test_weights_changed_in_place_are_repacked(precision, products):
    network = perturbed_network()
    fused = FusedEncoder(network, precision, products)
    tolerance = 1e-5 if precision == "fp32" else 0.15
    pieces = normalised_pieces(network, 32000, 1)
    before = fused.forward_features(pieces)
    with torch.no_grad():  # what an optimizer step or load_state_dict does
        network.blocks[1].mlp.fc1.weight.mul_(1.5)
        network.blocks[0].attn.qkv.bias.add_(0.3)
    after = fused.forward_features(pieces)
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    assert (before - after).abs().max() > 10 * tolerance if precision == "fp32" else not torch.allclose(before, after)
    assert (after - expected).abs().max() < tolerance
    network.load_state_dict(perturbed_network(seed=1).state_dict())
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    assert (fused.forward_features(pieces) - expected).abs().max() < tolerance


def test_fp32_engine_uses_the_fused_encoder_and_matches_the_module(tiny_checkpoint):
    model = auricle.load_model(checkpoint=tiny_checkpoint)
    assert model.engine._fused is not None
    waveforms = torch.randn(2, 50000, generator=torch.Generator().manual_seed(3)) * 0.1
    with torch.inference_mode():
        expected = model.network(waveforms)
    torch.testing.assert_close(model.probabilities(waveforms), expected, atol=1e-6, rtol=1e-5)


def test_rejects_other_precisions():
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        FusedEncoder(perturbed_network(), "fp16")
    with pytest.raises(ValueError, match="'onednn' or 'blas'"):
        FusedEncoder(perturbed_network(), "fp32", "mkl")
    with pytest.raises(ValueError, match="'sdpa' or 'products'"):
        FusedEncoder(perturbed_network(), "bf16", attention="flash")


def test_bf16_attention_follows_amx(monkeypatch):
    from auricle.engines import fused

    for amx, attention in [(True, "sdpa"), (False, "products")]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert fused.bf16_attention() == attention
        assert FusedEncoder(perturbed_network(), "bf16").attention == attention
        assert FusedEncoder(perturbed_network()).attention == "sdpa"  # fp32 attention has no choice
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe: no AMX claimed
    assert fused.bf16_attention() == "products"


def test_fp32_products_follow_the_cpus_vector_width(monkeypatch):
    from auricle.engines import fused

    for capability, products in [("AVX512", "onednn"), ("AVX2", "blas"), ("DEFAULT", "blas")]:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda capability=capability: capability)
        assert fused.fp32_products() == products
        assert FusedEncoder(perturbed_network()).products == products
        assert FusedEncoder(perturbed_network(), "int8").products == "fbgemm"  # only fp32 has the choice


def test_int8_scores_depend_on_batch_mates_only_within_int8_error():
    # Dynamic int8 takes one activation scale per batch (documented in docs/deploy.md): a clip's tokens
    # change with its batch mates, but by no more than the int8 error itself; fp32 does not change at all.
    network = perturbed_network()
    quiet = normalised_pieces(network, 160000, 1)
    loud = normalised_pieces(network, 160000, 3) * 4.0  # batch mates with a much wider activation range
    batch = torch.cat([quiet, loud])
    with torch.inference_mode():
        expected = network.forward_features(quiet)
    for precision, bound in [("fp32", 1e-5), ("int8", 0.15)]:
        fused = FusedEncoder(network, precision)
        alone = fused.forward_features(quiet)
        together = fused.forward_features(batch)[:1]
        assert (together - expected).abs().max() < bound
        if precision == "fp32":
            torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


def test_streams_calling_at_once_pack_one_copy(monkeypatch):
    # The engine's streams call forward_features together; each used to pack its own copy on the first call.
    import threading
    import time

    network = perturbed_network()
    fused = FusedEncoder(network)
    packs = []
    pack = fused._pack

    def slow_pack(linear):
        packs.append(linear)
        time.sleep(0.01)  # widens the window in which the other stream would start packing too
        return pack(linear)

    monkeypatch.setattr(fused, "_pack", slow_pack)
    pieces = normalised_pieces(network, 32000, 1)
    threads = [threading.Thread(target=fused.forward_features, args=(pieces,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(packs) == 4 * len(network.blocks)


@pytest.mark.parametrize("products", PRODUCTS)
def test_module_runs_as_before_once_packing_released_its_mapped_weights(tmp_path, products):
    from safetensors.torch import load_file, save_file

    network = perturbed_network(embed_dim=128)
    pieces = normalised_pieces(network, 48000, 2)
    with torch.inference_mode():
        expected = network.forward_features(pieces)
    save_file(network.state_dict(), tmp_path / "w.safetensors")
    network.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)  # weights in the mapped file
    got = FusedEncoder(network, products=products).forward_features(pieces)
    with torch.inference_mode():
        again = network.forward_features(pieces)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
