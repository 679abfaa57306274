"""MiDashengLM's audio encoder: auricle's Dasheng built from a language checkpoint's ``audio_encoder.*``.

The checkpoint stores the encoder under official Dasheng names with the input BatchNorm as ``init_bn.*``
(``init_bn.1.*`` in Dasheng's own releases; both are accepted) and torchaudio's two frontend buffers,
``front_end.0.spectrogram.window`` and ``front_end.0.mel_scale.fb``. Those buffers are not loaded: they
are compared with the ones auricle computes (float32, or rounded to the stored dtype when it is bf16 or
fp16, research notes §3.4.1) and a checkpoint made with other audio features is refused.

The frontend runs in float32 whatever the weights' dtype (the maintainer: a bf16 filterbank breaks the
features); the log-mel is cast to the weights' dtype only after it is computed.
"""

from __future__ import annotations

import numpy as np
import torch

from auricle.errors import AudioError, CheckpointError
from auricle.frontend import mel_filterbank
from auricle.language import choices
from auricle.models.checkpoints import load_state_dict_strict
from auricle.models.dasheng import Dasheng
from auricle.models.dasheng_config import PATCH_FRAMES, TARGET_FRAMES, DashengConfig

WINDOW, FILTERBANK = "front_end.0.spectrogram.window", "front_end.0.mel_scale.fb"
#: Widest deviation of a float32 stored buffer from the computed one (the two agree bit for bit in the
#: tiny reference; this leaves room for another filterbank implementation's rounding only).
BUFFER_TOLERANCE = 1e-5


def encoder_config(values: dict, source: str) -> DashengConfig:
    """The Dasheng config of a MiDashengLM ``audio_encoder_config`` (official Dasheng keyword names)."""
    try:
        config = DashengConfig(
            embed_dim=int(values["embed_dim"]), depth=int(values["depth"]), num_heads=int(values["num_heads"]),
            mlp_ratio=float(values.get("mlp_ratio", 4.0)), n_mels=int(values.get("n_mels", 64)),
            target_frames=int(values.get("target_length", TARGET_FRAMES)),
            qkv_bias=bool(values.get("qkv_bias", True)))
    except KeyError as missing:
        raise CheckpointError(f"{source}: the audio encoder config lacks {missing.args[0]}") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: bad audio encoder config ({error})") from None
    for key in ("patch_size", "patch_stride"):
        if key in values and list(values[key]) != [config.n_mels, PATCH_FRAMES]:
            raise CheckpointError(f"{source}: audio encoder {key} {values[key]} is not "
                                  f"[{config.n_mels}, {PATCH_FRAMES}] (Dasheng's patches)")
    return config


def check_frontend_buffers(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse stored frontend buffers that are absent or differ from the computed ones (in their dtype)."""
    expected = {WINDOW: torch.hann_window(512, periodic=True), FILTERBANK: mel_filterbank()}
    for key, computed in expected.items():
        stored = state.get(key)
        if stored is None:
            raise CheckpointError(f"{source}: lacks audio_encoder.{key} (the frontend it was trained with)")
        if stored.shape != computed.shape:
            raise CheckpointError(f"{source}: audio_encoder.{key} has shape {tuple(stored.shape)}, "
                                  f"not {tuple(computed.shape)}; other audio features than Dasheng's")
        if stored.dtype == torch.float32:
            deviation = float((stored - computed).abs().max())
            close = deviation <= BUFFER_TOLERANCE
        else:  # a bf16/fp16 checkpoint stores the buffers rounded: compare with ours rounded the same way
            deviation = float((stored.float() - computed.to(stored.dtype).float()).abs().max())
            close = deviation == 0.0
        if not close:
            raise CheckpointError(f"{source}: audio_encoder.{key} differs from Dasheng's computed frontend "
                                  f"(max deviation {deviation:.3g}); other audio features")


def build_encoder(config: dict, state: dict[str, torch.Tensor], source: str) -> Dasheng:
    """auricle's Dasheng holding ``state`` (the ``audio_encoder.*`` tensors) in their stored dtype."""
    dasheng_config = encoder_config(config, source)
    check_frontend_buffers(state, source)
    weights = {(f"init_bn.{key[len('init_bn.1.'):]}" if key.startswith("init_bn.1.") else key): tensor
               for key, tensor in state.items() if not key.startswith("front_end.")}
    with torch.device("meta"):
        encoder = Dasheng(dasheng_config)
    load_state_dict_strict(encoder, weights, f"{source} (audio_encoder.*)", assign=True)
    return encoder.eval().requires_grad_(False)


def check_audio(waveform: np.ndarray | torch.Tensor, name: str, subsample_factor: int = choices.SUBSAMPLE_FACTOR) -> int:
    """The clip's audio token count; one-line error when it makes none or is digital silence."""
    samples = int(waveform.shape[-1])
    count = choices.audio_token_count(samples, subsample_factor)
    if count < 1:
        shortest = (subsample_factor * choices.FRAMES_PER_ENCODER_TOKEN - 1) * choices.HOP_SAMPLES
        raise AudioError(f"{name}: too short to describe ({samples / choices.SAMPLE_RATE:.3f} s; "
                         f"at least {shortest / choices.SAMPLE_RATE:.2f} s is needed)")
    if not bool((torch.as_tensor(waveform) != 0).any()):
        raise AudioError(f"{name}: silent (every sample is zero); nothing to describe")
    return count


@torch.inference_mode()
def encode(encoder: Dasheng, waveform: torch.Tensor) -> torch.Tensor:
    """Encoder tokens (T, D) of one 16 kHz clip (samples,): log-mel in float32, the rest in the weights' dtype."""
    mel = encoder.spectrogram(waveform.float()[None])
    dtype = encoder.patch_embed.proj.weight.dtype
    return encoder.forward_features(encoder.normalize(mel.to(dtype)))[0]
