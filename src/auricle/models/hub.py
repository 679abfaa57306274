"""Downloading and caching published weights through the Hugging Face Hub."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from auricle.errors import CheckpointError
from auricle.models.registry import ModelInfo

#: Tried in order; safetensors first so nothing is unpickled when it exists.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


#: Seconds the hub's host has to accept a connection (name lookup included) before it is taken as
#: unreachable. Without this check an offline `auricle tag` waited ~26 s through the hub's retries.
CONNECT_TIMEOUT = 1.5


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network, as huggingface_hub reads it (1, ON, YES, TRUE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_host() -> tuple[str, int]:
    """The host and port of the hub (``HF_ENDPOINT``, default huggingface.co)."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def hub_reachable(timeout: float = CONNECT_TIMEOUT) -> bool:
    """Whether the hub's host accepts a TCP connection within ``timeout`` seconds, the name lookup included.

    Through a proxy the host is not dialled directly, so it is taken as reachable (the hub finds out).
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    connected: list[bool] = []

    def dial() -> None:  # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection(hub_host(), timeout=timeout).close()
            connected.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=dial, name="auricle-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(connected)


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub's retry warnings off: its failure ends in auricle's one line, which says it all."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


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
        if not local_only:  # not in any cache: find out at once whether the hub can be asked at all
            reason = _no_way_to_hub()
            if reason is not None:
                reasons.append(reason)
                break
        for filename in WEIGHT_FILES:
            try:
                with _quiet_hub():
                    weights = hf_hub_download(
                        info.hf_repo, filename, cache_dir=cache_dir, local_files_only=local_only
                    )
            except Exception as error:  # hub errors vary across versions; all mean "not here"
                if not local_only:
                    reasons.append(f"{filename}: {_first_line(error)}")
                    if isinstance(error, unreachable):
                        break  # the next file would only wait through the same retries
                continue
            try:  # the config names the model; not needed to load it
                with _quiet_hub():
                    hf_hub_download(info.hf_repo, "config.json", cache_dir=cache_dir, local_files_only=local_only)
            except Exception:
                pass
            return Path(weights)
    raise _unavailable(info, reasons[-1] if reasons else "offline", instead)


def _unavailable(info: ModelInfo, detail: str, instead: str) -> CheckpointError:
    elsewhere = f"Hugging Face {info.hf_repo}" + (f" or Zenodo {info.zenodo_url}" if info.zenodo_url else "")
    return CheckpointError(
        f"{info.name}: weights are not in the local cache and could not be downloaded from "
        f"the Hugging Face Hub ({info.hf_repo}: {detail}). Without network access, download "
        f"them elsewhere ({elsewhere}) and pass {instead}"
    )


def _no_way_to_hub() -> str | None:
    """Why the hub cannot be asked at all (offline, unreachable), else None; decided at once."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return f"{hub_host()[0]} cannot be reached"
    return None


#: The files of a whole-folder model (MiDashengLM): configs, tokenizer, safetensors shards and index.
FOLDER_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")


def fetch_folder(info: ModelInfo, cache_dir: str | os.PathLike | None = None,
                 instead: str = "--checkpoint DIR (checkpoint=DIR in Python)",
                 check: Callable[[Path], None] | None = None) -> Path:
    """The local folder of ``info``'s whole repository (sharded weights): cached, else downloaded.

    ``check`` sees the folder once its JSON files (config, shard index) are there and before any weights
    are downloaded, so that a model too big for this machine is refused without fetching gigabytes.
    """
    cached = cached_file(info.hf_repo, "config.json", cache_dir)
    if cached is not None and _weights_complete(cached.parent):
        return cached.parent
    from huggingface_hub import snapshot_download

    reason = _no_way_to_hub()
    if reason is not None:
        raise _unavailable(info, reason, instead)
    try:
        with _quiet_hub():
            folder = Path(snapshot_download(info.hf_repo, cache_dir=cache_dir, allow_patterns=["*.json"]))
        if check is not None:
            check(folder)
        with _quiet_hub():
            folder = Path(snapshot_download(info.hf_repo, cache_dir=cache_dir, allow_patterns=list(FOLDER_FILES)))
    except CheckpointError:
        raise
    except Exception as error:  # hub errors vary across versions; all mean "not downloaded"
        raise _unavailable(info, _first_line(error), instead) from None
    return folder


def _weights_complete(folder: Path) -> bool:
    """Whether a cached snapshot holds its weights: model.safetensors, or every shard its index names."""
    import json

    if (folder / "model.safetensors").is_file():
        return True
    try:
        shards = set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


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
