"""AudioSet labels, the ontology and class selection (auricle.labels)."""

from __future__ import annotations

import dataclasses

import pytest

from auricle.errors import LabelError
from auricle.labels import (
    AudioClass,
    LabelSet,
    Ontology,
    audioset_labels,
    audioset_ontology,
    describe_spec,
    resolve_classes,
)

SPEECH, BARK, DOG, CAT, ANIMAL = 0, 75, 74, 81, 72


def names(indices):
    labels = audioset_labels()
    return {labels[i].name for i in indices}


# --------------------------------------------------------------------------- labels


def test_audioset_labels_in_output_order():
    labels = audioset_labels()
    assert len(labels) == 527
    assert labels[0] == AudioClass(0, "/m/09x0r", "Speech")
    assert labels[526] == AudioClass(526, "/m/07hvw1", "Field recording")
    assert labels[1].name == "Male speech, man speaking"  # quoted name with a comma
    assert [c.index for c in labels] == list(range(527))
    assert len(set(labels.mids)) == 527 and len({n.casefold() for n in labels.names}) == 527
    assert labels.has_mids
    assert labels.index_of_mid("/m/07hvw1") == 526
    assert labels.index_of_name("  field RECORDING ") == 526
    assert (labels[BARK].name, labels[DOG].name, labels[CAT].name, labels[ANIMAL].name) == ("Bark", "Dog", "Cat", "Animal")


def test_labels_are_immutable_and_cached():
    labels = audioset_labels()
    assert audioset_labels() is labels
    with pytest.raises(dataclasses.FrozenInstanceError):
        labels.classes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        labels[0].name = "Talk"  # type: ignore[misc]
    assert labels.to_list()[0] == {"index": 0, "mid": "/m/09x0r", "name": "Speech"}


def test_every_label_is_an_ontology_node_with_the_same_name():
    ontology = audioset_ontology()
    assert len(ontology) == 632
    for item in audioset_labels():
        assert ontology.node(item.mid).name == item.name


def test_index_of_unknown_mid_raises():
    with pytest.raises(LabelError, match="unknown class MID '/m/nothing'"):
        audioset_labels().index_of_mid("/m/nothing")


def test_custom_label_set_from_names():
    labels = LabelSet.from_names(["Dog", "Bark", "kettle"])
    assert len(labels) == 3 and labels.names == ("Dog", "Bark", "kettle")
    assert labels.mids == ("", "", "") and not labels.has_mids
    assert labels[2] == AudioClass(2, "", "kettle")
    assert labels.to_list() == [
        {"index": 0, "mid": "", "name": "Dog"},
        {"index": 1, "mid": "", "name": "Bark"},
        {"index": 2, "mid": "", "name": "kettle"},
    ]
    # by name only: "Dog" is no ontology subtree here, and MIDs mean nothing
    assert resolve_classes(["dog"], labels) == [0]
    assert resolve_classes(["Kettle; BARK"], labels) == [1, 2]
    assert resolve_classes(["=Dog"], labels) == [0]
    with pytest.raises(LabelError, match=r"unknown class 'Animal'"):
        resolve_classes(["Animal"], labels)
    with pytest.raises(LabelError, match=r"did you mean 'kettle'"):
        resolve_classes(["kettel"], labels)


@pytest.mark.parametrize(
    ("names_", "message"),
    [(["a", "A"], "appears twice"), (["a", " "], "empty name"), ([], "at least one class")],
)
def test_custom_label_set_rejects_bad_names(names_, message):
    with pytest.raises(LabelError, match=message):
        LabelSet.from_names(names_)


# --------------------------------------------------------------------------- resolution


def test_resolve_by_name_is_case_insensitive_and_strips_whitespace():
    assert resolve_classes(["  bark  "]) == [BARK]
    assert resolve_classes(["FIELD RECORDING"]) == [526]
    # a comma is part of the name, never a separator
    assert resolve_classes(["male speech, man speaking"]) == [1]


def test_resolve_by_mid():
    assert resolve_classes(["/m/05tny_"]) == [BARK]
    assert resolve_classes(["/m/07hvw1"]) == [526]
    # a MID of a node with children selects its subtree, as its name does
    assert resolve_classes(["/m/0bt9lr"]) == resolve_classes(["Dog"])


def test_resolve_subtree():
    animal = resolve_classes(["Animal"])
    assert {"Animal", "Dog", "Bark", "Cat", "Meow", "Growling", "Bird"} <= names(animal)
    assert SPEECH not in animal and "Music" not in names(animal)
    assert len(animal) == 65
    # a class with children selects them too; "=" selects the class alone
    assert names(resolve_classes(["Dog"])) == {"Dog", "Bark", "Yip", "Howl", "Bow-wow", "Growling", "Whimper (dog)"}
    assert resolve_classes(["=Dog"]) == [DOG]
    assert resolve_classes(["= /m/0bt9lr"]) == [DOG]
    # an ontology node that is not a class selects the classes under it
    human_sounds = resolve_classes(["Human sounds"])
    assert SPEECH in human_sounds and len(human_sounds) == 72


def test_resolve_separator_sorts_and_deduplicates():
    assert resolve_classes(["Cat; Bark"]) == sorted(set(resolve_classes(["Cat"])) | {BARK})
    assert resolve_classes(["Bark", "bark;/m/05tny_", " ; Bark ;"]) == [BARK]
    assert resolve_classes("=Dog;=Cat") == [DOG, CAT]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(LabelError) as caught:
        resolve_classes(["Dog bark"])
    message = str(caught.value)
    assert message.startswith("unknown class 'Dog bark' (did you mean ")
    assert "'Bark'" in message and "'Dog'" in message and "\n" not in message
    with pytest.raises(LabelError, match=r"did you mean 'Smoke detector, smoke alarm'"):
        resolve_classes(["smoke alarm"])
    with pytest.raises(LabelError, match=r"did you mean 'Animal'"):
        resolve_classes(["Animl"])
    with pytest.raises(LabelError, match=r"unknown class MID '/m/zzzz'"):
        resolve_classes(["/m/zzzz"])


@pytest.mark.parametrize("spec", ["Yawn", "Tinnitus, ringing in the ears", "Musical note"])
def test_spec_selecting_no_class_raises(spec):
    with pytest.raises(LabelError, match="has none of the model's 527 classes"):
        resolve_classes([spec])


def test_exact_prefix_on_a_node_that_is_no_class_raises():
    with pytest.raises(LabelError, match="not one of the model's classes"):
        resolve_classes(["=Human sounds"])


@pytest.mark.parametrize("specs", [[], [" ; "], ""])
def test_no_specs_raise(specs):
    with pytest.raises(LabelError, match="no classes given"):
        resolve_classes(specs)


def test_subset_of_audioset_uses_the_ontology():
    full = audioset_labels()
    subset = LabelSet(tuple(AudioClass(i, full[j].mid, full[j].name) for i, j in enumerate([SPEECH, DOG, BARK, CAT])))
    assert resolve_classes(["Animal"], subset) == [1, 2, 3]
    assert resolve_classes(["Dog"], subset) == [1, 2]
    with pytest.raises(LabelError, match="none of the model's 4 classes"):
        resolve_classes(["Music"], subset)


def test_describe_spec_gives_the_canonical_name():
    assert describe_spec(" animal ") == "Animal"
    assert describe_spec("=dog") == "Dog"
    assert describe_spec("/m/05tny_") == "Bark"
    assert describe_spec("human SOUNDS") == "Human sounds"


# --------------------------------------------------------------------------- ontology


def test_ontology_lookup():
    ontology = audioset_ontology()
    assert audioset_ontology() is ontology
    dog = ontology.node("dog")
    assert (dog.mid, dog.name) == ("/m/0bt9lr", "Dog")
    assert ontology.node("/m/0bt9lr") is dog
    assert "Human sounds" in ontology and "Nothing" not in ontology
    assert ontology.node("Human sounds").abstract
    assert ontology.node("Field recording").blacklisted  # blacklisted, yet one of the 527
    assert [ontology.node(m).name for m in ontology.roots()] == [
        "Human sounds", "Animal", "Music", "Natural sounds", "Sounds of things",
        "Source-ambiguous sounds", "Channel, environment and background",
    ]
    with pytest.raises(LabelError, match=r"unknown ontology node 'Doggo' \(did you mean 'Dog'"):
        ontology.node("Doggo")


def test_ontology_nodes_with_several_parents():
    ontology = audioset_ontology()
    parents = {ontology.node(m).name for m in ontology.parents("Growling")}
    assert parents == {"Dog", "Cat", "Roaring cats (lions, tigers)", "Canidae, dogs, wolves"}
    growling = ontology.node("Growling").mid
    assert growling in ontology.descendants("Dog") and growling in ontology.descendants("Cat")
    assert ontology.path_to_root("Bark") == ["Bark", "Dog", "Domestic animals, pets", "Animal"]
    # several parents: the path follows the first one in the file
    assert ontology.path_to_root("Hiss") == ["Hiss", "Cat", "Domestic animals, pets", "Animal"]
    assert ontology.node("Steam").mid in ontology.ancestors("Hiss")
    assert [ontology.node(m).name for m in ontology.children("Glass")] == ["Chink, clink", "Shatter"]
    assert ontology.descendants("Bark", include_self=False) == set()
    assert ontology.descendants("Bark") == {"/m/05tny_"}


def _node(mid, children=()):
    return {"id": mid, "name": mid.upper(), "child_ids": list(children)}


def test_synthetic_dag_diamond_and_cycle_terminate():
    # root -> a, b; a -> c; b -> c (diamond: c has two parents); c -> d -> a (a cycle)
    ontology = Ontology.from_records(
        [_node("root", "ab"), _node("a", "c"), _node("b", "c"), _node("c", "d"), _node("d", "a")], "toy.json"
    )
    assert ontology.parents("c") == ("a", "b")
    assert ontology.parents("a") == ("root", "d")
    assert ontology.descendants("root") == {"root", "a", "b", "c", "d"}
    assert ontology.descendants("c", include_self=False) == {"d", "a"}
    assert ontology.path_to_root("c") == ["C", "A", "ROOT"]
    assert ontology.path_to_root("d") == ["D", "C", "A", "ROOT"]
    assert ontology.ancestors("b") == {"root"}
    assert ontology.roots() == ["root"]


def test_synthetic_ontology_errors_name_the_source():
    with pytest.raises(LabelError, match=r"toy.json: node 'A' lists unknown child 'zz'"):
        Ontology.from_records([_node("a", ["zz"])], "toy.json")
    with pytest.raises(LabelError, match=r"toy.json: node id 'a' appears twice"):
        Ontology.from_records([_node("a"), _node("a")], "toy.json")
