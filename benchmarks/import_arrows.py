"""Count the import arrows in ``src/auricle`` that run from a lower layer up to a higher one.

    python benchmarks/import_arrows.py            # the upward arrows, one a line, and the counts
    python benchmarks/import_arrows.py --json     # the same as JSON

Every ``import auricle.x`` and ``from auricle.x import y`` counts, at module level or inside a
function (a lazy import is still a dependency; it only runs later). Each arrow is one (importer,
imported module) pair. The layers, lowest first, are :data:`LAYERS` below: a module may import
its own layer and those beneath it. ``auricle/__init__.py`` (the public face) is the top layer,
so the package's own ``from auricle import __version__`` is counted as what it is: a climb.

The deprecated one-line re-exports (``auricle.exported`` and the like) stand where their target
stands. The script reads source only (no imports run), so it works without torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

#: The layers, lowest first: (name, module prefixes). The most specific prefix decides.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("auricle.errors", "auricle.devices", "auricle.allocator", "auricle.cache", "auricle.fingerprints",
                "auricle.filelists", "auricle.io.atomic", "auricle.inference.tuning", "auricle.inference.streams")),
    ("signal", ("auricle.audio", "auricle.frontend", "auricle.labels", "auricle.profiles", "auricle.options")),
    ("networks", ("auricle.models", "auricle.language.config", "auricle.language.choices",
                  "auricle.language.checkpoint", "auricle.language.encoder", "auricle.language.projector",
                  "auricle.language.decoder", "auricle.language.model", "auricle.language.prompts",
                  "auricle.language.results", "auricle.language")),
    ("running", ("auricle.engines", "auricle.inference", "auricle.onnx", "auricle.export_graph",
                 "auricle.export", "auricle.exported", "auricle.prepared")),
    ("user models", ("auricle.model", "auricle.dasheng_model", "auricle.language_model")),
    ("loading", ("auricle.loading",)),
    ("applications", ("auricle.io", "auricle.search", "auricle.listen", "auricle.training", "auricle.distill",
                      "auricle.downstream", "auricle.hear", "auricle.inference.system")),
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


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """The ``auricle`` modules a file imports (``from auricle.a import b`` names ``auricle.a.b`` when it is one)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "auricle")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "auricle":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found


def arrows(root: Path) -> list[tuple[str, str, str, str]]:
    """Every upward arrow: (importer, its layer, imported, its layer), sorted."""
    files = sorted(root.rglob("*.py"))
    names = {module_name(path, root): path for path in files}
    found = []
    for name, path in names.items():
        for target in imported_modules(ast.parse(path.read_text(), str(path)), set(names)):
            if target == name or target.startswith(name + "."):
                continue  # a package importing its own modules
            low, high = layer_of(name), layer_of(target)
            if high > low:
                found.append((name, LAYERS[low][0], target, LAYERS[high][0]))
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent / "src" / "auricle")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    up = arrows(args.root)
    if args.json:
        json.dump({"layers": [name for name, _ in LAYERS], "upward": [list(arrow) for arrow in up]},
                  sys.stdout, indent=2)
        print()
        return
    for importer, low, target, high in up:
        print(f"{importer} ({low}) -> {target} ({high})")
    print(f"{len(up)} upward arrows; layers, lowest first: {', '.join(name for name, _ in LAYERS)}")


if __name__ == "__main__":
    main()
