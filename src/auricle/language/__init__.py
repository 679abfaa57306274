"""MiDashengLM, natively: everything after the Dasheng encoder (projector, Qwen2 decoder, prompts, checkpoints).

Nothing here imports transformers at import time: :mod:`auricle.language.decoder` does it when a decoder
is built, so ``import auricle`` and every ``--help`` stay free of it. The open details that only the real
Hugging Face files can settle are named in one place, :mod:`auricle.language.choices`.
See docs/language.md.
"""
