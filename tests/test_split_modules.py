"""Modules split at a seam (architecture issue) keep their public names: the old path imports the same objects."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "auricle.audio": ("auricle.audio_files", ["list_audio_files", "AUDIO_EXTENSIONS"]),
    "auricle.labels": ("auricle.ontology", ["Ontology", "OntologyNode", "audioset_ontology"]),
    "auricle.labels ": ("auricle.label_names", ["close_matches"]),
    "auricle.downstream.evaluate": ("auricle.downstream.eval_inputs", [
        "EvaluationError", "FilePrediction", "predict", "read_predictions", "match_files", "read_strong_labels",
        "model_columns", "relabel", "read_matched_predictions"]),
    "auricle.inference.pipeline": ("auricle.inference.batching", [
        "decoded_windows", "file_blocks", "embedded_file", "FileBlocks", "is_array", "EMBED_BLOCK_SAMPLES"]),
    "auricle.downstream.finetune": ("auricle.downstream.finetune_net", [
        "with_new_head", "freeze_for_partial", "TrainingNet", "AugmentPlan", "draw_augment_plan"]),
    "auricle.downstream.finetune ": ("auricle.downstream.finetune_data", [
        "EpochSampler", "load_waveforms", "readable", "collate", "predict"]),
    "auricle.cli.search": ("auricle.io.search_hits", ["write_hits", "SEARCH_FORMATS"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_names_the_moved_objects(old):
    new, names = MOVED[old]
    before, after = importlib.import_module(old.strip()), importlib.import_module(new)
    for name in names:
        assert getattr(before, name) is getattr(after, name), f"{old.strip()}.{name}"
