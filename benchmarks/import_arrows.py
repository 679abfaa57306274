"""Count the import arrows in ``src/auricle`` that run from a lower layer up to a higher one.

    python benchmarks/import_arrows.py            # the upward arrows, one a line, and the counts
    python benchmarks/import_arrows.py --json     # the same as JSON

Every ``import auricle.x`` and ``from auricle.x import y`` counts, at module level or inside a
function (a lazy import is still a dependency; it only runs later). Each arrow is one (importer,
imported module) pair. The layers, lowest first, are :data:`LAYERS` below: a module may import
its own layer and those beneath it. ``auricle/__init__.py`` (the public face) is the top layer,
so the package's own ``from auricle import __version__`` is counted as what it is: a climb.

Two kinds of climb are reported apart from the rest, since no layering removes them: an import
whose line says ``deprecated`` (an old path kept one release as a re-export of the new one), and
``from auricle import __version__`` (the version read from the package face). A third kind is
listed too, though it is no import statement: a ``"auricle.module:function"`` string (a family
record naming its code, imported by the loading path when that family is loaded). The script reads
source only (no imports run), so it works without torch; ``--root`` measures another checkout.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

#: The layers, lowest first: (name, module prefixes). The most specific prefix decides.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # machine and filesystem helpers: they import only errors
    ("ground", ("auricle.errors", "auricle.devices", "auricle.allocator", "auricle.cache", "auricle.fingerprints",
                "auricle.io.atomic", "auricle.inference.tuning", "auricle.inference.streams")),
    # audio in, labels: what every model shares
    ("signal", ("auricle.audio", "auricle.audio_ffmpeg", "auricle.audio_files", "auricle.frontend", "auricle.labels",
                "auricle.label_names", "auricle.ontology", "auricle.profiles", "auricle.filelists")),
    # networks, their configs and checkpoint readers, the registry, the hub
    ("networks", ("auricle.models", "auricle.language")),
    # running a network over audio: engines, ONNX, windows, tagging options and results
    ("running", ("auricle.engines", "auricle.inference", "auricle.onnx", "auricle.options",
                 "auricle.language.results", "auricle.language.diary", "auricle.export_graph", "auricle.export", "auricle.exported",
                 "auricle.prepared")),
    ("user models", ("auricle.model", "auricle.dasheng_model", "auricle.language_model")),
    ("loading", ("auricle.loading",)),
    ("applications", ("auricle.io", "auricle.search", "auricle.listen", "auricle.training", "auricle.distill",
                      "auricle.downstream", "auricle.hear", "auricle.inference.system",
                      # the remote client stands in for a language model
                      "auricle.language.remote")),
    ("faces", ("auricle.serve", "auricle.cli", "auricle.__main__", "auricle")),
)


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module``: the layer of the longest prefix that matches it."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise SystemExit(f"{module}: in no layer; add it to LAYERS")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, known: set[str]) -> dict[str, str]:
    """The ``auricle`` modules a file imports (``from auricle.a import b`` names ``auricle.a.b`` when it is one),
    each with its kind: "deprecated" (a re-export kept one release), "version" (``__version__`` from the face)
    or "import"."""
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "auricle"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "auricle":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                targets.append(candidate if candidate in known else node.module)
        if not targets:
            continue
        text = " ".join(lines[node.lineno - 1:node.end_lineno])
        kind = ("deprecated" if "deprecated" in text else
                "version" if isinstance(node, ast.ImportFrom) and node.module == "auricle"
                and [alias.name for alias in node.names] == ["__version__"] else "import")
        for target in targets:  # a module imported in two ways counts as the first kind in KINDS
            found[target] = min(found.get(target, kind), kind, key=KINDS.index)
    for node in ast.walk(ast.parse(source)):  # "module:function" references (family code), imported later
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED.fullmatch(node.value):
            target = node.value.partition(":")[0]
            found.setdefault(target if target in known else target.rpartition(".")[0], "named")
    return found


#: Kinds of dependency, the one that counts first.
KINDS = ("import", "version", "deprecated", "named")
#: A reference to code by name (``"auricle.model:ced_model"``), as a family record holds one.
NAMED = re.compile(r"auricle(\.\w+)+:\w+")


def arrows(root: Path) -> list[tuple[str, str, str, str, str]]:
    """Every upward arrow: (importer, its layer, imported, its layer, kind), sorted."""
    files = sorted(root.rglob("*.py"))
    names = {module_name(path, root): path for path in files}
    found = []
    for name, path in names.items():
        for target, kind in imported_modules(path.read_text(), set(names)).items():
            if target == name or target.startswith(name + "."):
                continue  # a package importing its own modules
            low, high = layer_of(name), layer_of(target)
            if high > low:
                found.append((name, LAYERS[low][0], target, LAYERS[high][0], kind))
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "src" / "auricle")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    up = arrows(args.root)
    if args.json:
        json.dump({"layers": [name for name, _ in LAYERS], "upward": [list(arrow) for arrow in up],
                   "counts": {kind: sum(arrow[4] == kind for arrow in up) for kind in KINDS}},
                  sys.stdout, indent=2)
        print()
        return
    for importer, low, target, high, kind in up:
        print(f"{importer} ({low}) -> {target} ({high})" + ("" if kind == "import" else f"  [{kind}]"))
    counts = {kind: sum(arrow[4] == kind for arrow in up) for kind in KINDS}
    print(f"{counts['import']} upward arrows (besides {counts['version']} reading __version__ from the face, "
          f"{counts['deprecated']} deprecated re-exports and {counts['named']} family records naming their code); "
          "layers, lowest first: "
          f"{', '.join(name for name, _ in LAYERS)}")


if __name__ == "__main__":
    main()
