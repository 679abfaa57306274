"""Running the CLI in a fresh interpreter where `import torch` (and transformers) fails, as on an install
without torch."""

from __future__ import annotations

import os
import subprocess
import sys

#: Put first in a script: from then on `import torch` and `import transformers` fail.
NO_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
sys.meta_path.insert(0, NoTorch())
"""
WITHOUT_TORCH = NO_TORCH + """
sys.argv[0] = "auricle"
from auricle.cli import main
main()
"""


def without_torch(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`auricle ARGS` with ``env`` added to the environment; what runs provably never imports torch."""
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
