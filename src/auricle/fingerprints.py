"""SHA-256 fingerprints of what computes results: a network's weights, a file's bytes.

Torch-free (a network is only asked for its state dict), so an exported file's
fingerprint needs no torch either.
"""

from __future__ import annotations

import hashlib
import os


def model_key(network) -> str:
    """SHA-256 over the names, shapes and bytes of every tensor of the state dict (and its config)."""
    digest = hashlib.sha256()
    config = getattr(network, "config", None)
    if config is not None:
        digest.update(repr(sorted(config.to_dict().items())).encode())
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_key(path: str | os.PathLike) -> str:
    """SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tagger_key(model) -> str:
    """What computes a model's results: its weights and engine (int8 moves results), or an exported file."""
    network = getattr(model, "network", None)
    if network is None:
        return file_key(model.path)
    engine = getattr(model, "engine", None)
    label = engine.config.label if engine is not None else ""
    return hashlib.sha256(f"{model_key(network)} {label}".encode()).hexdigest()
