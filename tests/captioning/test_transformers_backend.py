"""The transformers backend end to end on a tiny random LLaVA built here (CLIP vision tower, Llama decoder,
byte-level BPE tokenizer trained by ``tokenizers``, a chat template), saved to and loaded from a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from camim.captioning.base import GenerationConfig
from camim.captioning.cache import PAPER_PROMPT, read_cache
from camim.captioning.images import ImageItem
from camim.captioning.runner import caption_images
from camim.errors import CamimError

from .conftest import draw_images

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(
        [PAPER_PROMPT, "user: assistant: a dog on a red mat next to a house"] * 5, trainer
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    folder = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _captioner(folder: Path, batch_size: int, max_tokens: int = 6):
    from camim.captioning.transformers_backend import TransformersBackendConfig, TransformersCaptioner

    config = TransformersBackendConfig(
        model=str(folder), device="cpu", dtype="float32", batch_size=batch_size
    )
    return TransformersCaptioner(config, GenerationConfig(max_tokens=max_tokens))


def test_captions_a_folder_in_batches_like_one_by_one(tiny_vlm: Path, tmp_path: Path):
    items = draw_images(tmp_path / "images", 5, size=(40, 30))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items.insert(2, ImageItem("broken.png", broken))
    batched = caption_images(items, _captioner(tiny_vlm, 3), tmp_path / "b.jsonl", progress=False)
    assert (batched.captioned, batched.corrupt, batched.failed) == (5, 1, 0)
    single = caption_images(items, _captioner(tiny_vlm, 1), tmp_path / "s.jsonl", progress=False)
    b = {r.img_id: r for r in read_cache(tmp_path / "b.jsonl").records}
    s = {r.img_id: r for r in read_cache(tmp_path / "s.jsonl").records}
    assert single.captioned == 5 and set(b) == set(s) == {i.img_id for i in items} - {"broken.png"}
    assert all(b[k].text == s[k].text for k in b)  # greedy decoding: batching does not change captions
    assert len({r.text for r in b.values()}) > 1  # the caption depends on the image
    record = b[items[0].img_id]
    assert record.model == str(tiny_vlm) and record.prompt == PAPER_PROMPT
    assert record.settings == {
        "backend": "transformers",
        "max_tokens": 6,
        "temperature": 0.0,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 3,
    }
    again = caption_images(items, _captioner(tiny_vlm, 3), tmp_path / "b.jsonl", progress=False)
    assert again.skipped_done == 5 and again.captioned == 0


def test_generation_respects_max_tokens_and_the_chat_template(tiny_vlm: Path):
    from PIL import Image

    images = [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (50, 20), "blue")]
    texts = {}
    for max_tokens in (2, 8):
        captioner = _captioner(tiny_vlm, 2, max_tokens=max_tokens)
        captioner.load()
        assert captioner.prompt_text() == f"user: <image>{PAPER_PROMPT}\nassistant:"
        captioner._network.generation_config.eos_token_id = None  # never stop early
        texts[max_tokens] = captioner.generate(images)
        assert all(texts[max_tokens])
    # greedy: the 8-token caption continues the 2-token one
    assert all(long.startswith(short) and len(long) > len(short) for short, long in zip(texts[2], texts[8]))
    assert [reason for _, reason in captioner._generate(images)] == ["length", "length"]
    # make the first token greedy decoding picks for the red image the end-of-sequence token
    inputs = captioner._processor(images=images[:1], text=[captioner.prompt_text()], return_tensors="pt")
    first = captioner._network.generate(**inputs, max_new_tokens=1, do_sample=False)[0, -1].item()
    captioner._network.generation_config.eos_token_id = first
    assert captioner._generate(images[:1])[0][1] == "stop"


def test_camim_caption_with_the_transformers_backend(tiny_vlm: Path, tmp_path: Path):
    from camim.captioning.cli import main

    draw_images(tmp_path / "images", 2)
    out = tmp_path / "c.jsonl"
    args = [
        "caption",
        "--images",
        str(tmp_path / "images"),
        "--backend",
        "transformers",
        "--model",
        str(tiny_vlm),
    ]
    assert main([*args, "--device", "cpu", "--max-tokens", "4", "--output", str(out), "--no-progress"]) == 0
    assert len(read_cache(out).records) == 2


def test_unloadable_model_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CamimError, match="cannot load image-text-to-text model"):
        _captioner(tmp_path / "empty", 1).load()
