"""The AudioSet ontology: 632 sound classes in a DAG (some nodes have several parents, e.g. ``Hiss``
sits under ``Cat``, ``Snake``, ``Steam`` and ``Onomatopoeia``).

Class selection (:func:`auricle.labels.resolve_classes`) uses it to expand a node into the
labelled classes of its subtree; :mod:`auricle.labels` re-exports these names under their old path.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from auricle.errors import LabelError
from auricle.label_names import _key, _unknown

@dataclass(frozen=True)
class OntologyNode:
    """One node of the AudioSet ontology."""

    mid: str
    name: str
    description: str = ""
    child_ids: tuple[str, ...] = ()
    #: ``abstract`` (a grouping with no examples of its own) and/or ``blacklist``
    #: (left out of AudioSet's rated labels; 12 of the 527 classes are still marked so).
    restrictions: tuple[str, ...] = ()

    @property
    def abstract(self) -> bool:
        return "abstract" in self.restrictions

    @property
    def blacklisted(self) -> bool:
        return "blacklist" in self.restrictions


class Ontology:
    """The AudioSet ontology: a DAG of sound classes, some with several parents.

    Every method taking ``mid`` also accepts a node name (case-insensitive).
    Traversals guard against cycles, although AudioSet has none.
    """

    __slots__ = ("_nodes", "_by_name", "_parents", "_source")

    def __init__(self, nodes: Iterable[OntologyNode], source: str = "<ontology>") -> None:
        by_mid: dict[str, OntologyNode] = {}
        by_name: dict[str, str] = {}
        for node in nodes:
            if not node.mid or not node.name.strip():
                raise LabelError(f"{source}: a node lacks its id or name ({node.mid!r}, {node.name!r})")
            if node.mid in by_mid:
                raise LabelError(f"{source}: node id {node.mid!r} appears twice")
            key = _key(node.name)
            if key in by_name:
                raise LabelError(f"{source}: node name {node.name!r} appears twice ({by_name[key]}, {node.mid})")
            by_mid[node.mid] = node
            by_name[key] = node.mid
        parents: dict[str, list[str]] = {mid: [] for mid in by_mid}
        for node in by_mid.values():
            for child in node.child_ids:
                if child not in by_mid:
                    raise LabelError(f"{source}: node {node.name!r} lists unknown child {child!r}")
                if node.mid not in parents[child]:
                    parents[child].append(node.mid)
        self._nodes = by_mid
        self._by_name = by_name
        self._parents = {mid: tuple(p) for mid, p in parents.items()}
        self._source = source

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], source: str = "<ontology>") -> "Ontology":
        """Build from AudioSet ontology JSON records (``id``, ``name``, ``child_ids``, ...)."""
        nodes = []
        for position, record in enumerate(records):
            try:
                nodes.append(
                    OntologyNode(
                        mid=str(record["id"]),
                        name=str(record["name"]),
                        description=str(record.get("description", "")),
                        child_ids=tuple(str(c) for c in record.get("child_ids", ())),
                        restrictions=tuple(str(r) for r in record.get("restrictions", ())),
                    )
                )
            except (KeyError, TypeError, AttributeError) as error:
                raise LabelError(f"{source}: node {position} is malformed ({error!r})") from None
        return cls(nodes, source)

    @classmethod
    def from_json(cls, source: str | os.PathLike[str] | Traversable) -> "Ontology":
        """Read an AudioSet ``ontology.json``."""
        where = str(source.name if isinstance(source, Traversable) else os.fspath(source))
        try:
            if isinstance(source, Traversable):
                data = json.loads(source.read_text(encoding="utf-8"))
            else:
                with open(source, encoding="utf-8") as handle:
                    data = json.load(handle)
        except OSError as error:
            raise LabelError(f"{where}: cannot read ({error.strerror or error})") from None
        except json.JSONDecodeError as error:
            raise LabelError(f"{where}: invalid JSON at line {error.lineno}: {error.msg}") from None
        if not isinstance(data, list):
            raise LabelError(f"{where}: expected a JSON list of nodes")
        return cls.from_records(data, where)

    # -- lookup

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[OntologyNode]:
        return iter(self._nodes.values())

    def __contains__(self, name_or_mid: object) -> bool:
        return isinstance(name_or_mid, str) and self.find(name_or_mid) is not None

    def __repr__(self) -> str:
        return f"Ontology({len(self._nodes)} nodes from {self._source})"

    def find(self, name_or_mid: str) -> OntologyNode | None:
        """The node with this exact MID or case-insensitive name, or None."""
        text = name_or_mid.strip()
        if text in self._nodes:
            return self._nodes[text]
        mid = self._by_name.get(_key(text))
        return self._nodes[mid] if mid is not None else None

    def node(self, name_or_mid: str) -> OntologyNode:
        """The node with this exact MID or case-insensitive name; :class:`LabelError` with suggestions if none."""
        found = self.find(name_or_mid)
        if found is None:
            raise _unknown("ontology node", name_or_mid.strip(), (n.name for n in self._nodes.values()))
        return found

    def _mid(self, name_or_mid: str) -> str:
        return self.node(name_or_mid).mid

    # -- structure

    def roots(self) -> list[str]:
        """MIDs of the nodes without parents, in file order."""
        return [mid for mid, parents in self._parents.items() if not parents]

    def children(self, mid: str) -> tuple[str, ...]:
        """MIDs of the direct children, in file order."""
        return self._nodes[self._mid(mid)].child_ids

    def parents(self, mid: str) -> tuple[str, ...]:
        """MIDs of the direct parents (several for some nodes), in file order."""
        return self._parents[self._mid(mid)]

    def descendants(self, mid: str, include_self: bool = True) -> set[str]:
        """MIDs of every node below ``mid`` (reached through any parent)."""
        return self._reach(mid, lambda node: self._nodes[node].child_ids, include_self)

    def ancestors(self, mid: str, include_self: bool = False) -> set[str]:
        """MIDs of every node above ``mid``, through all parents."""
        return self._reach(mid, lambda node: self._parents[node], include_self)

    def _reach(self, mid: str, step, include_self: bool) -> set[str]:
        # The ontology is a DAG (some classes have two parents), so track what was seen.
        start = self._mid(mid)
        seen: set[str] = set()
        stack = [start]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(step(current))
        if not include_self:
            seen.discard(start)
        return seen

    def path_to_root(self, mid: str) -> list[str]:
        """Names from the node up to a root, ``["Bark", "Dog", "Domestic animals, pets", "Animal"]``.

        Where a node has several parents, the first listed in the ontology file is
        followed (use :meth:`parents` / :meth:`ancestors` for all of them).
        """
        current = self._mid(mid)
        path = [current]
        on_path = {current}
        while True:
            nxt = next((p for p in self._parents[current] if p not in on_path), None)
            if nxt is None:
                break
            path.append(nxt)
            on_path.add(nxt)
            current = nxt
        return [self._nodes[m].name for m in path]


@functools.lru_cache(maxsize=1)
def audioset_ontology() -> Ontology:
    """The AudioSet ontology shipped with auricle (632 nodes)."""
    return Ontology.from_json(files("auricle") / "data" / "ontology.json")
