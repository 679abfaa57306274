"""The tagging options of `auricle tag`, `auricle listen` and the service stay in step.

Each front end is compared with the one declaration in auricle.options (and
through it with the others): same names, defaults, bounds and choices. A flag
or query parameter written by hand with another default fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import click
import pytest

from auricle.cli.listen import listen_command
from auricle.cli.tag import tag_command
from auricle.inference.events import EventOptions
from auricle.model import AudioModel
from auricle.options import LIVE_HOP, LIVE_TAG_OPTIONS, TAG_OPTIONS, OptionSpec


def _declared(spec: OptionSpec) -> dict:
    return {"default": list(spec.default) if spec.multiple else spec.default, "minimum": spec.minimum,
            "maximum": spec.maximum, "choices": list(spec.choices), "multiple": spec.multiple}


def _click_view(command: click.Command, spec: OptionSpec) -> dict:
    params = {param.name: param for param in command.params}
    assert spec.name in params, f"{command.name} has no --{spec.name}"
    param = params[spec.name]
    assert spec.flag in param.opts and (spec.short is None or spec.short in param.opts), param.opts
    kind = param.type
    return {"default": list(param.default) if param.multiple else param.default,
            "minimum": getattr(kind, "min", None), "maximum": getattr(kind, "max", None),
            "choices": list(getattr(kind, "choices", [])), "multiple": param.multiple}


@pytest.mark.parametrize("name", list(TAG_OPTIONS))
def test_tag_flags_are_the_declared_options(name):
    assert _click_view(tag_command, TAG_OPTIONS[name]) == _declared(TAG_OPTIONS[name])


@pytest.mark.parametrize("name", list(LIVE_TAG_OPTIONS))
def test_listen_flags_are_the_declared_live_options(name):
    assert _click_view(listen_command, LIVE_TAG_OPTIONS[name]) == _declared(LIVE_TAG_OPTIONS[name])


def test_live_options_differ_from_tagging_only_in_the_hop_and_help():
    assert set(LIVE_TAG_OPTIONS) <= set(TAG_OPTIONS)
    for name, live in LIVE_TAG_OPTIONS.items():
        expected = dataclasses.replace(TAG_OPTIONS[name], help=live.help,
                                       default=LIVE_HOP if name == "hop" else TAG_OPTIONS[name].default)
        assert live == expected


def test_declared_defaults_are_the_librarys():
    keywords = inspect.signature(AudioModel.tag_options).parameters
    events = {field.name: field.default for field in dataclasses.fields(EventOptions)}
    for name, spec in TAG_OPTIONS.items():
        library = events[name] if name in events else keywords[name].default
        assert library == spec.default, name
    assert set(TAG_OPTIONS) == (set(keywords) - {"self"}) | set(events)


# -- the service -------------------------------------------------------------------


def _schema_view(parameter: dict) -> dict:
    schema = parameter["schema"]
    typed = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    pattern = typed.get("pattern")
    return {"default": schema.get("default"), "minimum": typed.get("minimum"), "maximum": typed.get("maximum"),
            "choices": pattern[2:-2].split("|") if pattern else [], "multiple": typed.get("type") == "array"}


def test_serve_tag_query_parameters_are_the_declared_options():
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from auricle.serve.app import create_app, tag_options

    class Unused:  # building the app and its schema never touches the model
        name = "unused"

    parameters = create_app(Unused()).openapi()["paths"]["/v1/tag"]["post"]["parameters"]
    found = {p["name"]: _schema_view(p) for p in parameters if p["in"] == "query"}
    assert set(TAG_OPTIONS) <= set(found)
    assert set(found) - set(TAG_OPTIONS) == {"filename", "spectrogram"}  # upload-only parameters
    for name, spec in TAG_OPTIONS.items():
        assert found[name] == _declared(spec), name
    # The request-parameter helper that the stream shares has the same defaults.
    keywords = inspect.signature(tag_options).parameters
    assert {name: keywords[name].default for name in TAG_OPTIONS} == {
        name: spec.default for name, spec in TAG_OPTIONS.items()}


def test_stream_settings_default_to_the_live_options(tiny_serve_model):
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient
    from serve_support import LOCAL, STREAM

    from auricle.serve.app import create_app

    with TestClient(create_app(tiny_serve_model), base_url=LOCAL) as client, client.websocket_connect(STREAM) as socket:
        socket.send_text(json.dumps({}))
        ready = socket.receive_json()
    assert ready["type"] == "ready"
    assert (ready["window"], ready["hop"]) == (LIVE_TAG_OPTIONS["window"].default, LIVE_TAG_OPTIONS["hop"].default)


@pytest.fixture(scope="module")
def tiny_serve_checkpoint(tmp_path_factory):
    from serve_support import tiny_random_checkpoint

    return tiny_random_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.fixture(scope="module")
def tiny_serve_model(tiny_serve_checkpoint):
    import auricle

    return auricle.load_model(checkpoint=tiny_serve_checkpoint)


# -- ranges ------------------------------------------------------------------------


def test_every_number_option_has_a_finite_range():
    for name, spec in TAG_OPTIONS.items():
        if spec.kind in (int, float) and name != "top_k":  # top_k above the classes is just every class
            assert spec.minimum is not None and spec.maximum is not None and math.isfinite(spec.maximum), name


@pytest.mark.parametrize("name", ["window", "hop", "min_duration", "min_gap"])
def test_a_huge_number_is_refused_in_one_line_everywhere(name, tiny_serve_model, tiny_serve_checkpoint, tmp_path):
    """``window=1e308`` was an OverflowError traceback in the CLI and the API, and a 500 from the service."""
    from click.testing import CliRunner
    from serve_support import noise, write_wav

    from auricle.cli import cli
    from auricle.errors import OptionError

    wav = write_wav(tmp_path / "x.wav", noise(1.0, 0.1, 0))
    extra = ["--events"] if name.startswith("min_") else []
    result = CliRunner().invoke(cli, ["tag", str(wav), "--checkpoint", str(tiny_serve_checkpoint),
                                      *extra, TAG_OPTIONS[name].flag, "1e308"])
    assert result.exit_code == 2 and "1e+308 is not in the range" in result.output, result.output
    assert "Traceback" not in result.output

    events = {"events": True} if name.startswith("min_") else {}
    with pytest.raises(OptionError, match=f"^{name}: expected at most"):
        if events:
            from auricle.inference.events import EventOptions

            tiny_serve_model.tag(str(wav), events=EventOptions(**{name: 1e308}))
        else:
            tiny_serve_model.tag(str(wav), **{name: 1e308})

    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    from fastapi.testclient import TestClient

    from auricle.serve.app import create_app
    from serve_support import LOCAL

    query = "&".join([f"{name}=1e308"] + ["events=true"] * bool(events))
    with TestClient(create_app(tiny_serve_model), base_url=LOCAL) as client:
        response = client.post(f"/v1/tag?{query}", content=wav.read_bytes())
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{name}: Input should be less than or equal to")
