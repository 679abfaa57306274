"""Replayable augmentation: keyed draws, the operations, and bit-identical replay of what the teacher saw."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from distill_helpers import make_audio, make_teacher

from auricle.distill import DistillError
from auricle.distill.augment import (
    AugmentConfig,
    ViewRenderer,
    _Stream,
    draw_params,
    mask_mel,
    view_waveform,
)

FULL = AugmentConfig(shift=0.5, shift_prob=0.5, gain_db=6.0, time_mask=40, time_masks=2, freq_mask=12,
                     freq_masks=2, mixup_prob=0.5, mixup_alpha=0.4)
KEYS = [f"{i:016x}-{j:05d}" for i in range(20) for j in range(5)]


def test_draws_are_pure_functions_of_seed_epoch_and_key():
    a = draw_params(KEYS[3], 2, 11, FULL, 32000, KEYS)
    assert a == draw_params(KEYS[3], 2, 11, FULL, 32000, list(KEYS))
    others = [draw_params(KEYS[3], 3, 11, FULL, 32000, KEYS), draw_params(KEYS[3], 2, 12, FULL, 32000, KEYS),
              draw_params(KEYS[4], 2, 11, FULL, 32000, KEYS)]
    assert all(other != a for other in others)


def test_draws_respect_the_config_and_have_the_intended_distribution():
    views = [draw_params(key, epoch, 0, FULL, 32000, KEYS) for key in KEYS for epoch in range(10)]
    shifts = np.array([v.shift for v in views])
    assert np.all(np.abs(shifts) <= 16000) and 0.42 < np.mean(shifts != 0) < 0.58
    gains_db = 20 * np.log10([v.gain for v in views])
    assert gains_db.min() >= -6 - 1e-4 and gains_db.max() <= 6 + 1e-4 and abs(gains_db.mean()) < 0.4
    mixed = [v for v in views if v.partner is not None]
    assert 0.42 < len(mixed) / len(views) < 0.58
    assert all(v.partner != v.key and v.partner in KEYS for v in mixed)
    lam = np.array([v.lam for v in mixed])
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.139.
    assert abs(lam.mean() - 0.5) < 0.04 and abs(lam.var() - 1 / (4 * 1.8)) < 0.02
    frames = 1 + 32000 // 160
    for v in views:
        assert len(v.time_masks) == 2 and len(v.freq_masks) == 2
        assert all(0 <= w <= 40 and 0 <= s and s + w <= frames for s, w in v.time_masks)
        assert all(0 <= w <= 12 and 0 <= s and s + w <= 64 for s, w in v.freq_masks)
    assert len({v.time_masks for v in views}) > len(views) // 2


@pytest.mark.parametrize("alpha", [0.05, 1.0, 5.0])
def test_beta_sampler_matches_beta_moments(alpha):
    stream = _Stream(0, 0, "k", "test")
    draws = np.array([stream.beta(alpha) for _ in range(4000)])
    assert np.all((draws >= 0) & (draws <= 1))
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(draws.mean() - 0.5) < 0.03 and abs(draws.var() - variance) < 0.1 * variance


def test_waveform_operations():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(1000).astype(np.float32)
    partner = rng.standard_normal(600).astype(np.float32)
    params = draw_params("x", 0, 0, AugmentConfig(), 1000)
    plain = params.__class__(**{**params.to_dict(), "shift": 0, "gain": 1.0, "partner": None, "lam": 1.0,
                                "time_masks": (), "freq_masks": ()})
    assert np.array_equal(view_waveform(audio, plain), audio)
    rolled = plain.__class__(**{**plain.to_dict(), "shift": 7, "gain": 0.5})
    assert np.array_equal(view_waveform(audio, rolled), np.roll(audio, 7) * np.float32(0.5))
    mixed = plain.__class__(**{**plain.to_dict(), "partner": "p", "lam": 0.25})
    expected = np.float32(0.25) * audio + np.float32(0.75) * np.concatenate([partner, np.zeros(400, np.float32)])
    assert np.array_equal(view_waveform(audio, mixed, partner), expected)
    with pytest.raises(DistillError, match="no partner audio"):
        view_waveform(audio, mixed)
    with pytest.raises(DistillError, match="expects 1000"):
        view_waveform(audio[:999], plain)


def test_mask_mel_sets_only_the_masked_cells():
    mel = torch.randn(2, 64, 101) - 50
    params = [draw_params(k, 0, 0, AugmentConfig(time_mask=30, freq_mask=10), 16000) for k in ("a", "b")]
    masked = mask_mel(mel, params, mask_value=0.0)
    for row, view in enumerate(params):
        expected = torch.zeros(64, 101, dtype=torch.bool)
        for start, width in view.time_masks:
            expected[:, start : start + width] = True
        for start, width in view.freq_masks:
            expected[start : start + width, :] = True
        assert torch.equal(masked[row] == 0, expected)
        assert torch.equal(masked[row][~expected], mel[row][~expected])


def test_renderer_mel_is_the_models_spectrogram_and_batch_invariant():
    from auricle.models.ced import CED, CEDConfig

    network = CED(CEDConfig(embed_dim=64, num_heads=1, depth=1))
    renderer = ViewRenderer(AugmentConfig(time_mask=0, freq_mask=0), seed=0)
    waves = torch.randn(3, 16000) * 0.1
    params = [renderer.params(str(i), 0, 16000) for i in range(3)]
    batch = renderer.mel(waves, params)
    assert torch.equal(batch, network.spectrogram(waves))
    assert all(torch.equal(batch[i : i + 1], renderer.mel(waves[i : i + 1], params[i : i + 1])) for i in range(3))
    short = renderer.mel(torch.randn(1, 1000), [renderer.params("s", 0, 1000)])
    assert short.shape == (1, 64, 16)  # padded to one patch like CED.spectrogram


def test_student_replay_is_bit_identical_to_what_the_teacher_saw(tmp_path):
    """Record every log-mel the teacher scored; regenerate each view as a student would, in another order."""
    from auricle.distill.shards import ShardConfig, ShardReader, ShardSet, write_shards
    from auricle.distill.store import TargetStore, encode_values
    from auricle.distill.teach import TeachConfig, teach
    from auricle.distill.teachers import TeacherEnsemble, load_teacher

    audio = make_audio(tmp_path / "audio", bad=False)
    write_shards([str(audio / name) for name in ("a.wav", "c.wav", "e.wav")], tmp_path / "shards",
                 ShardConfig(chunk_seconds=2.0, chunks_per_shard=4))
    teacher = load_teacher(str(make_teacher(tmp_path / "teacher.safetensors")))
    seen: dict[bytes, torch.Tensor] = {}  # the teacher's input waveform (bytes) -> the log-mel it scored
    scored = teacher.probabilities

    def recording(waveforms, mel=None):
        for wave, row in zip(waveforms, mel):
            seen[wave.numpy().tobytes()] = row.clone()
        return scored(waveforms, mel)

    teacher.probabilities = recording
    ensemble = TeacherEnsemble([teacher])
    config = TeachConfig(epochs=2, top_k=5, seed=3, batch_size=3, augment=FULL)
    teach(tmp_path / "shards", tmp_path / "store", config=config, ensemble=ensemble)

    shards = ShardSet.open(tmp_path / "shards")
    store = TargetStore.open(tmp_path / "store")
    views = [(s, e, k) for s, e in store.units() for k in shards.keys(s)]
    assert len(seen) == len(views) == 2 * len(shards)
    random.Random(0).shuffle(views)
    renderer = ViewRenderer(store.augment_config(), store.seed)  # built from the manifest alone
    readers = {path.name: ShardReader(path) for path in shards.shards}
    units = {unit: store.read_unit(*unit) for unit in store.units()}
    mixed = 0
    for shard, epoch, key in views:
        reader = readers[shard]
        audio = reader.audio(key)
        params = renderer.params(key, epoch, len(audio), shards.keys(shard))
        wave = renderer.waveform(audio, params, reader.audio)
        student_mel = renderer.mel([wave], [params])[0]
        # The same waveform bytes reached the teacher, and it scored exactly this log-mel.
        assert torch.equal(student_mel, seen[wave.tobytes()]), (shard, epoch, key)
        mixed += params.partner is not None
        # And the stored targets are the teacher's top-k on exactly this input.
        top = scored(torch.from_numpy(wave)[None], student_mel[None])[0].topk(5)
        row = shards.keys(shard).index(key)
        assert np.array_equal(units[shard, epoch].indices[row], top.indices.numpy())
        assert np.array_equal(units[shard, epoch].codes[row], encode_values(top.values.numpy(), store.codec))
    for reader in readers.values():
        reader.close()
    assert mixed > 0  # mixup partners were replayed too
