"""Modules over 400 lines, and which of them say why in their docstring (the architecture issue's number).

A module may stay over the limit when its docstring says why, in a sentence beginning
"Over 400 lines:". Lines are counted as `wc -l` counts them.

    python benchmarks/module_sizes.py                       # this tree's src/auricle
    python benchmarks/module_sizes.py --src /tmp/base/src   # another tree (git worktree add /tmp/base COMMIT)
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

LIMIT = 400
#: How a module's docstring gives its reason for being longer.
REASON = re.compile(r"over\s+400\s+lines\s*:", re.IGNORECASE)


def module_sizes(package: Path, limit: int = LIMIT) -> list[dict]:
    """Every module of ``package`` over ``limit`` lines: path, lines, and the reason its docstring gives (or None)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines <= limit:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        match = REASON.search(docstring)
        reason = None
        if match:
            sentence = docstring[match.end():].split("\n\n")[0]
            reason = " ".join(sentence.split())
        found.append({"module": str(path.relative_to(package.parent)), "lines": lines, "reason": reason})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src folder holding auricle/ [default: this tree's]")
    parser.add_argument("--limit", type=int, default=LIMIT)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    found = module_sizes(args.src / "auricle", args.limit)
    for entry in sorted(found, key=lambda e: -e["lines"]):
        print(f"{entry['lines']:5d}  {entry['module']:<40}  {entry['reason'] or '(no reason given)'}")
    without = sum(entry["reason"] is None for entry in found)
    print(f"{len(found)} modules over {args.limit} lines; {without} without a reason in their docstring")
    if args.json is not None:
        args.json.write_text(json.dumps({"src": str(args.src), "limit": args.limit, "over": len(found),
                                         "without_reason": without, "modules": found}, indent=1) + "\n")


if __name__ == "__main__":
    main()
