"""The open details of MiDashengLM (research notes §3.4), each pinned so a change is deliberate.

A user with the real Hugging Face files who finds one of these wrong changes it in
auricle/language/choices.py and here, with the evidence in the commit message.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from auricle.errors import AuricleError
from auricle.language import choices
from auricle.language.choices import audio_token_count


def test_decoder_positions_are_sequential_as_vllm_runs_the_model():
    assert choices.POSITIONS == "sequential"


def test_token_ids_default_to_the_qwen25_omni_vocabulary():
    assert (choices.DEFAULT_AUDIO_TOKEN_ID, choices.DEFAULT_AUDIO_BOS_TOKEN_ID,
            choices.DEFAULT_AUDIO_EOS_TOKEN_ID) == (151646, 151647, 151648)
    assert (choices.AUDIO_TOKEN, choices.AUDIO_BOS_TOKEN, choices.AUDIO_EOS_TOKEN) == \
        ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


def test_generation_is_greedy_and_stops_at_chatml_ends():
    assert choices.DECODING == "greedy"
    assert choices.STOP_TOKENS == ("<|im_end|>", "<|endoftext|>")
    assert choices.DEFAULT_MAX_NEW_TOKENS == 128


def test_the_chat_template_has_no_system_turn_and_puts_the_audio_after_the_text():
    assert choices.DEFAULT_SYSTEM_PROMPT is None
    assert choices.AUDIO_AFTER_TEXT is True and choices.PART_SEPARATOR == ""


def test_batches_are_left_padded_with_positions_from_the_mask():
    assert choices.PADDING_SIDE == "left" and choices.POSITIONS_FROM_MASK is True


def test_encoder_details_belong_to_the_encoder():
    assert choices.FRONTEND_OWNER == "auricle.models.dasheng"
    assert choices.ENCODER_BATCH_OF_ONE is True


@pytest.mark.parametrize("seconds, tokens", [(0.2, 1), (1, 5), (3, 15), (4, 20), (10, 50), (25.3, 126), (30, 150)])
def test_audio_token_count_is_the_processor_formula(seconds, tokens):
    assert audio_token_count(round(seconds * choices.SAMPLE_RATE)) == tokens
    assert choices.MIN_SAMPLES == 3200


@pytest.mark.integration
def test_importing_auricle_its_cli_and_the_language_modules_does_not_import_transformers():
    code = ("import sys, auricle, auricle.cli, auricle.language.model, auricle.language.prompts, "
            "auricle.language.checkpoint; "
            "print(sorted(m for m in ('transformers', 'tokenizers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_without_transformers_the_error_says_how_to_install_it(monkeypatch):
    from auricle.language.decoder import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(AuricleError, match=r"^MiDashengLM needs transformers and tokenizers: "
                                           r"pip install 'auricle\[language\]'$"):
        require_transformers()
