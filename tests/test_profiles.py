"""Event profiles (auricle.profiles)."""

from __future__ import annotations

import tomllib
from importlib.resources import files

import numpy as np
import pytest

from auricle.errors import LabelError
from auricle.labels import EXACT_PREFIX, audioset_labels, split_specs
from auricle.profiles import Profile, ProfileEvent, available_profiles, load_profile, parse_profile

HOME_EVENTS = {
    "Smoke alarm", "Glass breaking", "Siren", "Baby cry", "Screaming", "Crying", "Cough",
    "Doorbell", "Knock", "Door slam", "Phone ringing", "Dog bark", "Cat meow", "Water running",
}


def write(tmp_path, text, name="mine.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bundled_profiles_are_listed():
    assert "home" in available_profiles()
    assert available_profiles() == sorted(available_profiles())


def test_home_profile_loads_case_insensitively():
    profile = load_profile("HOME")
    assert profile is load_profile("home")
    assert profile.name == "home" and profile.source == "bundled:home"
    assert profile.description
    assert set(profile.event_labels) == HOME_EVENTS
    labels = audioset_labels()
    smoke = next(e for e in profile.events if e.label == "Smoke alarm")
    assert [labels[i].name for i in smoke.class_indices] == ["Smoke detector, smoke alarm", "Fire alarm"]
    glass = next(e for e in profile.events if e.label == "Glass breaking")
    assert [labels[i].name for i in glass.class_indices] == ["Glass", "Shatter"]  # not "Chink, clink"


@pytest.mark.parametrize("name", available_profiles())
def test_every_bundled_profile_names_exact_classes(name):
    """Bundled profiles use exact class names (no reliance on case folding), and every event resolves."""
    profile = load_profile(name)
    data = tomllib.loads((files("auricle") / "data" / "profiles" / f"{name}.toml").read_text(encoding="utf-8"))
    exact = set(audioset_labels().names)
    for table in data["event"]:
        for spec in split_specs(table["classes"]):
            assert spec.removeprefix(EXACT_PREFIX) in exact, spec
    assert len(profile.events) == len(data["event"])
    for event in profile.events:
        assert event.class_indices and list(event.class_indices) == sorted(set(event.class_indices))
        assert 0.0 <= event.threshold <= 1.0


def test_custom_profile_from_a_file(tmp_path):
    path = write(
        tmp_path,
        """
        description = "Pets"
        default_threshold = 0.2

        [[event]]
        classes = ["bark"]            # label defaults to the class name

        [[event]]
        label = "Cat"
        classes = ["Meow; Purr", "Hiss"]
        threshold = 0.6

        [[event]]
        classes = "animal"            # a single string is fine; the subtree
        threshold = 1
        """,
        "pets.toml",
    )
    profile = load_profile(str(path))
    assert profile.name == "pets" and profile.source == str(path) and profile.description == "Pets"
    labels = audioset_labels()
    assert profile.event_labels == ("Bark", "Cat", "Animal")
    assert profile.event_thresholds == (0.2, 0.6, 1.0)
    assert [labels[i].name for i in profile.events[1].class_indices] == ["Purr", "Meow", "Hiss"]
    assert len(profile.events[2].class_indices) == 65
    assert load_profile(path) == profile  # a Path works too
    thresholds = profile.thresholds_per_class()
    assert thresholds[75] == 0.2 and thresholds[labels.index_of_name("Meow")] == 0.6
    assert thresholds[labels.index_of_name("Animal")] == 1.0
    assert profile.class_indices() == tuple(sorted(thresholds))


def test_default_threshold_is_half_without_one():
    profile = parse_profile('[[event]]\nclasses = ["Bark"]\n', "x.toml")
    assert profile.events == (ProfileEvent("Bark", (75,), 0.5),)
    assert profile.name == "x"


BAD = {
    "syntax": ('name = "x"\n[[event]\nclasses = ["Bark"]\n', r"invalid TOML: .*line 2"),
    "unknown event key": (
        '[[event]]\nlabel = "Dog"\nclasses = ["Bark"]\ntreshold = 0.3\n',
        r"event 1 \('Dog'\): unknown key 'treshold' \(did you mean 'threshold'\?\)",
    ),
    "unknown top key": ('nme = "x"\n[[event]]\nclasses = ["Bark"]\n', r"unknown key 'nme' \(did you mean 'name'\?\)"),
    "events plural": ('[[events]]\nclasses = ["Bark"]\n', r"unknown key 'events' \(events are \[\[event\]\] tables\)"),
    "no events": ('name = "x"\n', r"no events"),
    "unknown class": (
        '[[event]]\nlabel = "Smoke"\nclasses = ["Smoke alarm"]\n',
        r"event 1 \('Smoke'\): unknown class 'Smoke alarm' \(did you mean 'Smoke detector, smoke alarm'",
    ),
    "empty selection": ('[[event]]\nclasses = ["Yawn"]\n', r"event 1: ontology node 'Yawn' .* has none"),
    "threshold": ('[[event]]\nclasses = ["Bark"]\nthreshold = 1.5\n', r"event 1: threshold 1.5 is outside \[0, 1\]"),
    "default threshold": ('default_threshold = -0.1\n[[event]]\nclasses = ["Bark"]\n', r"default_threshold: .*outside"),
    "threshold type": ('[[event]]\nclasses = ["Bark"]\nthreshold = "high"\n', r"threshold must be a number"),
    "duplicate label": (
        '[[event]]\nlabel = "Pet"\nclasses = ["Bark"]\n[[event]]\nlabel = "pet"\nclasses = ["Meow"]\n',
        r"duplicate event label 'pet' \(events 1 and 2\)",
    ),
    "duplicate default label": ('[[event]]\nclasses = ["Bark"]\n[[event]]\nclasses = ["bark"]\n', r"duplicate event label"),
    "label needed": ('[[event]]\nclasses = ["Bark", "Meow"]\n', r"'label' is required"),
    "no classes": ('[[event]]\nlabel = "x"\n', r"missing 'classes'"),
    "empty classes": ('[[event]]\nlabel = "x"\nclasses = []\n', r"classes is empty"),
    "classes type": ('[[event]]\nclasses = [1, 2]\n', r"classes must be a list of strings"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_profiles_raise_one_line_naming_the_file(tmp_path, case):
    text, pattern = BAD[case]
    path = write(tmp_path, text, "broken-profile.toml")
    with pytest.raises(LabelError, match=pattern) as caught:
        load_profile(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "broken-profile.toml" in message
    assert "\n" not in message


def test_missing_file_and_unknown_bundled_name(tmp_path):
    with pytest.raises(LabelError, match=r"nothere.toml: profile file not found"):
        load_profile(str(tmp_path / "nothere.toml"))
    with pytest.raises(LabelError, match=r"unknown profile 'hmoe' \(did you mean 'home'\? bundled: .*home"):
        load_profile("hmoe")


def _profile(*events):
    return Profile("t", "", tuple(ProfileEvent(label, tuple(ix), th) for label, ix, th in events), "<test>")


def test_event_scores_take_the_max_over_each_event():
    profile = _profile(("a", (3, 10), 0.5), ("b", (7,), 0.2), ("c", (3, 7, 526), 0.3))
    probabilities = np.zeros((2, 527), dtype=np.float32)
    probabilities[0, [3, 7, 10, 526]] = [0.1, 0.4, 0.9, 0.05]
    probabilities[1, [3, 7, 10, 526]] = [0.8, 0.3, 0.2, 0.95]
    expected = np.array([[0.9, 0.4, 0.4], [0.8, 0.3, 0.95]], dtype=np.float32)
    np.testing.assert_array_equal(profile.event_scores(probabilities), expected)
    np.testing.assert_array_equal(profile.event_scores(probabilities[1]), expected[1])  # (527,) -> (3,)
    windows = np.stack([probabilities, probabilities[::-1]])  # (2, 2, 527) -> (2, 2, 3)
    assert profile.event_scores(windows).shape == (2, 2, 3)
    assert profile.class_indices() == (3, 7, 10, 526)
    assert profile.thresholds_per_class() == {3: 0.3, 7: 0.2, 10: 0.5, 526: 0.3}
    with pytest.raises(ValueError, match="527"):
        profile.event_scores(np.zeros((2, 10)))


def test_home_event_scores_shape():
    profile = load_profile("home")
    probabilities = np.random.default_rng(0).random((4, 527))
    scores = profile.event_scores(probabilities)
    assert scores.shape == (4, len(profile.events))
    for column, event in enumerate(profile.events):
        np.testing.assert_array_equal(scores[:, column], probabilities[:, list(event.class_indices)].max(axis=1))
