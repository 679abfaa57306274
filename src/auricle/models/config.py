"""The dimensions of a CED encoder and its head, without torch (the registry and exported files read them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PATCH_SIZE = 16
#: Frames of one internal piece; longer spectrograms are split (official ``target_length``).
TARGET_FRAMES = 1012
HEAD_ACTIVATIONS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class CEDConfig:
    """Dimensions of a CED encoder and its classification head."""

    embed_dim: int
    num_heads: int
    depth: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 527
    n_mels: int = 64
    patch_size: int = PATCH_SIZE
    target_frames: int = TARGET_FRAMES
    qkv_bias: bool = True
    #: How logits become scores: "sigmoid" (multi-label, AudioSet) or "softmax"
    #: (heads trained for exactly one class per clip, e.g. by ``auricle finetune``).
    head_activation: str = "sigmoid"
    #: Hidden width of an MLP head (LayerNorm, Linear, GELU, Linear), e.g. from ``auricle probe --head mlp``;
    #: 0 is the standard LayerNorm+Linear head.
    head_hidden: int = 0

    def __post_init__(self) -> None:
        if self.head_activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"head_activation must be one of {', '.join(HEAD_ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "CEDConfig":
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{key: value for key, value in values.items() if key in known})
