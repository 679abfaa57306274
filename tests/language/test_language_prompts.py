"""MiDashengLM prompts: ChatML golden strings, presets, and the tokenizer check."""

from __future__ import annotations

import pytest

from auricle.errors import CheckpointError, OptionError
from auricle.language import prompts
from auricle.language.prompts import PRESETS, preset, render_prompt

GOLDEN = ("<|im_start|>user\nWrite an audio caption describing the sound"
          "<|audio_bos|><|AUDIO|><|AUDIO|><|AUDIO|><|audio_eos|><|im_end|>\n<|im_start|>assistant\n")


def test_the_default_prompt_renders_as_chatml_with_the_expanded_audio():
    assert render_prompt(preset(), 3) == GOLDEN


def test_a_system_turn_comes_first_when_given():
    text = render_prompt("What sound is heard?", 1, system="You are a helpful language and speech assistant.")
    assert text == ("<|im_start|>system\nYou are a helpful language and speech assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat sound is heard?<|audio_bos|><|AUDIO|><|audio_eos|><|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_presets_are_the_official_prompts():
    assert PRESETS == {
        "caption": "Write an audio caption describing the sound",
        "speech": "What is the speech content can be heard in this audio?",
        "music": "What is the musical content in this audio?",
        "sounds": "What are the sound effects in this audio?",
        "environment": "What is the acoustic environment and recording quality of this audio?",
        "tags": "Which labels describe the sound?",
    }
    assert prompts.DEFAULT_PRESET == "caption"
    with pytest.raises(OptionError, match="unknown prompt preset 'mood' \\(choose from caption, speech, music"):
        preset("mood")


def test_audio_too_short_for_one_token_is_refused():
    with pytest.raises(Exception, match="the audio makes 0 tokens"):
        render_prompt("What sound is heard?", 0)


@pytest.fixture
def tokenizer_file(tmp_path):
    pytest.importorskip("tokenizers", reason="MiDashengLM needs the language extra (tokenizers)")
    from language_support import write_tokenizer

    return write_tokenizer(tmp_path / "tokenizer.json")


def test_the_tokenizer_keeps_special_tokens_whole(tokenizer_file):
    from language_support import AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID

    tokenizer = prompts.PromptTokenizer.from_file(tokenizer_file.parent, audio_token_id=AUDIO_TOKEN_ID)
    ids = tokenizer.prompt_ids(preset(), 4)
    start = ids.index(AUDIO_BOS_ID)
    assert ids[start:start + 6] == [AUDIO_BOS_ID, *[AUDIO_TOKEN_ID] * 4, AUDIO_EOS_ID]
    assert ids.count(AUDIO_TOKEN_ID) == 4
    assert ids[0] == tokenizer.ids["<|im_start|>"] and ids[-2] == tokenizer.ids["<|im_start|>"]
    assert tokenizer.stop_ids == (tokenizer.ids["<|im_end|>"], 58)
    assert tokenizer.decode(ids) == "user write an audio caption describing the sound assistant"


def test_a_tokenizer_without_the_audio_tokens_is_a_one_line_error(tmp_path):
    pytest.importorskip("tokenizers", reason="MiDashengLM needs the language extra (tokenizers)")
    from language_support import write_tokenizer

    path = write_tokenizer(tmp_path / "tokenizer.json", special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    with pytest.raises(CheckpointError) as error:
        prompts.PromptTokenizer.from_file(path)
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"{path}: the tokenizer lacks <|AUDIO|>, <|audio_bos|>, <|audio_eos|>; "
                       "not a MiDashengLM tokenizer")


def test_a_tokenizer_whose_audio_id_differs_from_the_config_is_refused(tokenizer_file):
    with pytest.raises(CheckpointError, match="the tokenizer's <\\|AUDIO\\|> is id 61 but the config's audio_token_id is 151646"):
        prompts.PromptTokenizer.from_file(tokenizer_file, audio_token_id=151646)
    (tokenizer_file.parent / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json: not a readable tokenizer.json"):
        prompts.PromptTokenizer.from_file(tokenizer_file.parent / "bad.json")


def test_a_prompt_from_the_tokenizer_runs_through_the_model(tokenizer_file, tmp_path):
    pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")
    import torch
    from language_support import TINY_CONFIG, tiny_tensors, write_checkpoint

    from auricle.language.choices import audio_token_count
    from auricle.language.model import MiDashengLM

    model = MiDashengLM.load(write_checkpoint(tmp_path / "model", tiny_tensors()))
    tokenizer = prompts.PromptTokenizer.from_file(tokenizer_file, audio_token_id=model.config.audio_token_id)
    samples = 16_000
    encoder_tokens = torch.randn(1, int(1 + samples / 160) // 4, TINY_CONFIG["audio_encoder"]["embed_dim"])
    audio = model.project(encoder_tokens)[0]
    assert len(audio) == audio_token_count(samples) == 5
    ids = tokenizer.prompt_ids(preset("sounds"), len(audio))
    answer = model.generate([ids], [audio], max_new_tokens=5, stop_ids=tokenizer.stop_ids)[0]
    assert len(answer) <= 5 and not set(answer) & set(tokenizer.stop_ids)
    assert isinstance(tokenizer.decode(answer), str)


def test_answer_asks_one_question_about_several_clips(tokenizer_file, tmp_path):
    pytest.importorskip("transformers", reason="MiDashengLM needs the language extra (transformers)")
    import torch
    from language_support import ENCODER_DIM, tiny_tensors, write_checkpoint

    from auricle.language.model import MiDashengLM

    model = MiDashengLM.load(write_checkpoint(tmp_path / "model", tiny_tensors()))
    tokenizer = prompts.PromptTokenizer.from_file(tokenizer_file, audio_token_id=model.config.audio_token_id)
    torch.manual_seed(3)
    clips = [torch.randn(frames, ENCODER_DIM) for frames in (25, 60)]
    together = model.answer(tokenizer, clips, preset(), max_new_tokens=6)
    alone = [model.answer(tokenizer, [clip], preset(), max_new_tokens=6)[0] for clip in clips]
    assert together == alone and all(isinstance(text, str) for text in together)
