"""Labelled dataset loader: both layouts, label spellings, splits, targets and every error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from auricle.errors import DatasetError
from auricle.io.datasets import read_dataset
from conftest import DATA, require


def _wav(path, seconds=0.2):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def _manifest(tmp_path, text, name="labels.csv", files=()):
    for file in files:
        _wav(tmp_path / file)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_folder_per_class(tmp_path):
    for name in ("dog/a.wav", "dog/sub/b.flac", "cat/c.wav", "10/d.wav", "2/e.wav"):
        _wav(tmp_path / name)
    (tmp_path / "dog" / "notes.txt").write_text("not audio")
    dataset = read_dataset(tmp_path)
    assert dataset.classes == ("2", "10", "cat", "dog")  # natural order
    assert not dataset.multi_label and dataset.splits == ()
    assert len(dataset) == 5
    assert sorted(dataset.class_indices().tolist()) == [0, 1, 2, 3, 3]
    targets = dataset.targets()
    assert targets.shape == (5, 4) and targets.sum() == 5


def test_empty_class_folder_is_an_error(tmp_path):
    _wav(tmp_path / "dog" / "a.wav")
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match=r"1 class folders have no audio files: 'cat'"):
        read_dataset(tmp_path)


def test_csv_multi_label_with_names_and_mids(tmp_path):
    text = "file,labels,split\nclips/a.wav,Dog;/m/01yrx,train\nclips/b.wav, cat ,train\nclips/c.wav,/m/0bt9lr,test\n"
    path = _manifest(tmp_path, text, files=["clips/a.wav", "clips/b.wav", "clips/c.wav"])
    dataset = read_dataset(path)
    # /m/01yrx is Cat, /m/0bt9lr is Dog; " cat " merges with Cat case-insensitively.
    assert dataset.classes == ("Cat", "Dog")
    assert dataset.items[0].labels == ("Dog", "Cat") and dataset.items[1].labels == ("Cat",)
    assert dataset.multi_label
    assert dataset.items[0].file == str(tmp_path / "clips" / "a.wav")
    train = dataset.split("train")
    assert train.classes == dataset.classes and len(train) == 2
    np.testing.assert_array_equal(train.targets(), [[1, 1], [1, 0]])
    np.testing.assert_array_equal(read_dataset(path, split="test").targets(), [[0, 1]])
    with pytest.raises(DatasetError, match="multi-label"):
        dataset.class_indices()


def test_tsv_and_custom_columns_and_audio_dir(tmp_path):
    audio = tmp_path / "audio"
    for name in ("x.wav", "y.wav"):
        _wav(audio / name)
    path = _manifest(tmp_path, "name\tdigit\n x.wav \t7\ny.wav\t3\n", name="meta.tsv")
    dataset = read_dataset(path, audio_dir=audio, file_column="name", label_column="digit")
    assert dataset.classes == ("3", "7") and dataset.class_indices().tolist() == [1, 0]


@pytest.mark.parametrize(
    "text, files, message",
    [
        ("file,labels\na.wav,x\nb.wav,y\nc.wav,y\n", ["a.wav"], r"2 of 3 files missing under .*: b.wav, c.wav"),
        ("file,labels\na.wav,x\n./a.wav,y\n", ["a.wav"], r"line 3: ./a.wav is listed twice \(first on line 2\)"),
        ("file,labs\na.wav,x\n", ["a.wav"], r"no column 'labels' in the header \(file, labs\)"),
        ("file,labels\na.wav,/m/nonexistent\n", ["a.wav"], r"line 2: unknown AudioSet MID '/m/nonexistent'"),
        ("file,labels\n,x\n", [], r"line 2: no file"),
        ("file,labels\n", [], r"no rows"),
        ("file,labels,split\na.wav,x,train\nb.wav,y,\n", ["a.wav", "b.wav"], r"line 3: empty split"),
        # An unquoted comma inside a label used to drop the rest of the label without a word.
        ("file,labels\na.wav,Dog\nb.wav,/m/09x0r;Female speech, woman speaking\n", ["a.wav", "b.wav"],
         r"line 3: 3 fields, but the header has 2; quote a field that holds ','"),
    ],
)
def test_manifest_errors_are_one_line(tmp_path, text, files, message):
    path = _manifest(tmp_path, text, files=files)
    with pytest.raises(DatasetError, match=message) as caught:
        read_dataset(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_unknown_split_and_classes_without_examples(tmp_path):
    text = "file,labels,split\na.wav,x,train\nb.wav,y,test\n"
    path = _manifest(tmp_path, text, files=["a.wav", "b.wav"])
    with pytest.raises(DatasetError, match=r"unknown split 'valid' \(splits: train, test\)"):
        read_dataset(path, split="valid")
    train = read_dataset(path, split="train")
    with pytest.raises(DatasetError, match=r"1 classes have no examples in training: 'y'"):
        train.require_examples("training")


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        read_dataset(tmp_path / "nope.csv")


def test_fsdd_fixed_split_reads_directly():
    fsdd = require(DATA / "fsdd")
    dataset = read_dataset(fsdd / "labels.csv", audio_dir=fsdd / "recordings", label_column="digit")
    assert dataset.classes == tuple(str(d) for d in range(10))
    assert len(dataset.split("train")) == 2700 and len(dataset.split("test")) == 300
    assert dataset.split("test").class_counts().tolist() == [30] * 10


def test_files_beside_the_manifest_in_a_sub_folder_are_pointed_out(tmp_path):
    for name in ("a.wav", "b.wav"):
        _wav(tmp_path / "audio" / name)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("file,labels\na.wav,x\nb.wav,y\n")
    with pytest.raises(DatasetError) as raised:
        read_dataset(manifest)
    message = str(raised.value)
    assert "2 of 2 files missing under" in message and message.endswith(
        f"(they are under {tmp_path / 'audio'}: give that as the audio folder)")
    assert len(read_dataset(manifest, audio_dir=tmp_path / "audio").items) == 2
    (tmp_path / "audio" / "b.wav").unlink()  # not all there either: no folder to point to
    with pytest.raises(DatasetError) as raised:
        read_dataset(manifest)
    assert "they are under" not in str(raised.value)
