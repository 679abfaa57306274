"""Downloading and caching published weights through the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from auricle.errors import CheckpointError
from auricle.models.registry import ModelInfo

#: Tried in order; safetensors first so nothing is unpickled when it exists.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def fetch_weights(info: ModelInfo, cache_dir: str | os.PathLike | None = None,
                  instead: str = "--checkpoint PATH (checkpoint=PATH in Python)") -> Path:
    """Path of ``info``'s weights: from the local cache if there, else downloaded (with progress).

    ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` are honoured as usual by huggingface_hub.
    ``instead``: how the caller takes a local file, named in the error when there is no way to the weights.
    """
    for filename in WEIGHT_FILES:
        cached = cached_file(info.hf_repo, filename, cache_dir)
        if cached is not None:
            return cached
    from huggingface_hub import hf_hub_download

    try:  # what the hub raises when it cannot be reached at all (after its own retries)
        from huggingface_hub.errors import LocalEntryNotFoundError as unreachable
    except ImportError:
        unreachable = ()
    reasons: list[str] = []
    for local_only in (True, False):
        for filename in WEIGHT_FILES:
            try:
                weights = hf_hub_download(
                    info.hf_repo, filename, cache_dir=cache_dir, local_files_only=local_only
                )
            except Exception as error:  # hub errors vary across versions; all mean "not here"
                if not local_only:
                    reasons.append(f"{filename}: {_first_line(error)}")
                    if isinstance(error, unreachable):
                        break  # the next file would only wait through the same retries (~25 s offline)
                continue
            try:  # the config names the model; not needed to load it
                hf_hub_download(info.hf_repo, "config.json", cache_dir=cache_dir, local_files_only=local_only)
            except Exception:
                pass
            return Path(weights)
    detail = reasons[-1] if reasons else "offline"
    raise CheckpointError(
        f"{info.name}: weights are not in the local cache and could not be downloaded from "
        f"the Hugging Face Hub ({info.hf_repo}: {detail}). Without network access, download "
        f"them elsewhere (Hugging Face {info.hf_repo} or Zenodo {info.zenodo_url}) and pass {instead}"
    )


def cached_file(repo: str, filename: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """``filename`` of ``repo``'s main revision in the local Hugging Face cache, or None.

    Read from the cache's documented layout (``models--ORG--NAME/refs/main`` names the
    snapshot folder) without importing huggingface_hub, which with its HTTP client
    adds to a short command's start (an ad-hoc check: ~0.3 s). Anything else goes through the hub.
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    else:  # huggingface_hub's own order of variables
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        root = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
                    or os.path.join(home, "hub")).expanduser()
    folder = root / f"models--{repo.replace('/', '--')}"
    try:
        revision = (folder / "refs" / "main").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = folder / "snapshots" / revision / filename
    return path if revision and path.is_file() else None
