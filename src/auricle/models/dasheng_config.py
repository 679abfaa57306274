"""The dimensions of a Dasheng encoder, without torch (the registry reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from auricle.models.config import HEAD_ACTIVATIONS

#: Frames per patch (and per token): 4 x 10 ms.
PATCH_FRAMES = 4
#: The official ``target_length``: 1008 frames, i.e. 252-token chunks (10.08 s).
TARGET_FRAMES = 1008


@dataclass(frozen=True)
class DashengConfig:
    """Dimensions of a Dasheng encoder and its optional classification head (``num_classes`` 0: none)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    n_mels: int = 64
    patch_frames: int = PATCH_FRAMES
    target_frames: int = TARGET_FRAMES
    qkv_bias: bool = True
    num_classes: int = 0
    head_activation: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {', '.join(HEAD_ACTIVATIONS)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def chunk_tokens(self) -> int:
        """Tokens per chunk that runs through the blocks alone (252)."""
        return self.target_frames // self.patch_frames

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DashengConfig":
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})


#: The released encoders (Zenodo record 11511780, Hugging Face mispeech/dasheng-*) and the small
#: geometry of the reference checkpoint; a checkpoint of any other shape is refused.
SIZES: dict[str, DashengConfig] = {
    "base": DashengConfig(embed_dim=768, depth=12, num_heads=12),
    "0.6b": DashengConfig(embed_dim=1280, depth=32, num_heads=16),
    "1.2b": DashengConfig(embed_dim=1536, depth=40, num_heads=24),
    "small": DashengConfig(embed_dim=192, depth=4, num_heads=3),
}


def is_dasheng_state(state_dict: dict) -> bool:
    """Whether a state dict (any layout) holds a Dasheng encoder: patches span all 64 bands, 4 frames wide."""
    for prefix in ("", "encoder."):
        weight = state_dict.get(f"{prefix}patch_embed.proj.weight")
        if weight is not None:
            return len(weight.shape) == 4 and tuple(weight.shape[-2:]) == (64, PATCH_FRAMES)
    return False


def holds_dasheng(state_dict: dict, meta: dict | None) -> bool:
    """Whether a state dict (with the JSON config beside it) is a Dasheng encoder's: the family test."""
    return is_dasheng_state(state_dict) or (meta is not None and meta.get("family") == "dasheng")
