"""The package's face: every type a user receives is reachable as ``auricle.X``, without torch on import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import auricle


def test_every_name_in_all_resolves_to_what_its_module_defines():
    from auricle.dasheng_model import DashengModel
    from auricle.onnx.exported import ExportedModel
    from auricle.inference.results import ClipTags, Embeddings, Failure

    for name in auricle.__all__:
        assert getattr(auricle, name) is not None, name
    assert auricle.ExportedModel is ExportedModel and auricle.DashengModel is DashengModel
    assert auricle.ClipTags is ClipTags and auricle.Embeddings is Embeddings and auricle.Failure is Failure
    assert dataclasses.is_dataclass(auricle.TagOptions) and dataclasses.is_dataclass(auricle.EventOptions)
    assert issubclass(auricle.OptionError, auricle.AuricleError) and issubclass(auricle.OptionError, ValueError)


def test_an_unknown_name_is_an_attribute_error():
    try:
        auricle.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("auricle.NoSuchThing resolved")


@pytest.mark.integration
def test_importing_auricle_imports_neither_torch_nor_numpy():
    code = "import sys, auricle; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_version_is_one_value_the_face_and_the_package_metadata_share():
    import tomllib
    from pathlib import Path

    from auricle.version import __version__

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert auricle.__version__ == __version__ == pyproject["project"]["version"]
