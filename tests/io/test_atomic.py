"""Files written whole or not at all (auricle.io.atomic), and the writers that rely on it."""

from __future__ import annotations

import os

import pytest

from auricle.io import atomic
from auricle.io.writers import open_output


def test_a_finished_block_replaces_the_file_and_a_failed_one_leaves_it(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with atomic.replacing(path) as temporary:
        temporary.write_text("new")
        assert path.read_text() == "old"  # nothing visible until the block ends
    assert path.read_text() == "new"
    with pytest.raises(RuntimeError), atomic.replacing(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("stopped")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]


def test_temporary_names_are_per_process_and_hide_the_suffix(tmp_path):
    temporary = atomic.temporary_sibling(tmp_path / "model.safetensors")
    assert temporary.parent == tmp_path and str(os.getpid()) in temporary.name
    temporary.write_bytes(b"left by a killed run")
    # A folder of weights is searched by suffix: a leftover must not pass for weights.
    assert list(tmp_path.glob("*.safetensors")) == [] and list(tmp_path.glob(f"*{atomic.TEMPORARY_MARK}")) == [temporary]


def test_durable_writes_and_text(tmp_path):
    atomic.write_bytes(tmp_path / "a.npz", b"\x00\x01", durable=True)
    atomic.write_text(tmp_path / "b.txt", "héllo\n")
    assert (tmp_path / "a.npz").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.txt"]


def test_whole_outputs_replace_the_old_file_only_when_closed(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text("[earlier results]\n")
    stream = open_output(str(path), append=False, whole=True)
    stream.write("[")
    stream.flush()
    assert path.read_text() == "[earlier results]\n"  # a run killed now keeps them
    stream.write("]\n")
    stream.close()
    assert path.read_text() == "[]\n" and sorted(tmp_path.iterdir()) == [path]
    # Line formats are written in place as they go, for --resume.
    lines = open_output(str(tmp_path / "tags.jsonl"), append=False, whole=False)
    lines.write("{}\n")
    lines.flush()
    assert (tmp_path / "tags.jsonl").read_text() == "{}\n"
    lines.close()


def test_a_failed_write_removes_the_temporary_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "tags.json"
    path.write_text("earlier")
    stream = atomic.TextFile(path)

    class FullDisk:
        closed = False

        def write(self, text):
            raise OSError(28, "No space left on device")

        def close(self):
            self.closed = True

    stream._handle.close()
    stream._handle = FullDisk()
    with pytest.raises(OSError, match="No space left"):
        stream.write("x")
    assert path.read_text() == "earlier" and sorted(tmp_path.iterdir()) == [path]
    stream.flush()  # a writer flushing as it closes does not hide the failure behind another error
    stream.close()  # closing after the failure commits nothing
    assert path.read_text() == "earlier"


def test_a_pipe_is_written_in_place_and_a_link_is_followed(tmp_path):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    # Renaming over a pipe or a device (-o /dev/stdout, /dev/null) would remove it: it is written as it is.
    stream = open_output(str(fifo), append=False, whole=True)
    stream.write("through the pipe\n")
    stream.close()
    reader.join(timeout=10)
    assert received == ["through the pipe\n"] and fifo.is_fifo()
    atomic.write_text(os.devnull, "discarded")
    assert not os.path.isfile(os.devnull)

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic.write_text(link, "new")
    stream = open_output(str(link), append=False, whole=True)
    stream.write("newer")
    stream.close()
    assert link.is_symlink() and target.read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]


def test_written_name_reads_back_what_a_temporary_was_for(tmp_path):
    made = atomic.temporary_sibling(tmp_path / "a.json")
    assert atomic.written_name(made.name) == "a.json"
    assert atomic.written_name("state.123.tmp") == "state"
    for name in ("a.json.tmp", "a.json.x.tmp", ".123.tmp", "notes.txt", "tmp", "a.json.123"):
        assert atomic.written_name(name) is None, name


def test_remove_leftovers_takes_temporaries_only_and_with_of_only_those_named(tmp_path):
    for name in ("config.json", "config.json.7.tmp", "result.json.8.tmp", "notes.json.tmp", "model.pt"):
        (tmp_path / name).write_text("x")
    atomic.remove_leftovers(tmp_path, of={"config.json"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.pt", "notes.json.tmp", "result.json.8.tmp"]
    atomic.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pt"]


def test_a_failed_write_names_the_file_asked_for_not_the_temporary(tmp_path):
    target = tmp_path / "missing" / "model.onnx"
    with pytest.raises(FileNotFoundError) as raised:
        atomic.write_bytes(target, b"x")
    assert raised.value.filename == str(target) and ".tmp" not in str(raised.value)
    with pytest.raises(FileNotFoundError) as raised:
        atomic.TextFile(target)
    assert raised.value.filename == str(target)
    assert not (tmp_path / "missing").exists()
