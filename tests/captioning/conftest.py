from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from camim.captioning.cache import PAPER_PROMPT
from camim.captioning.images import ImageItem
from camim.captioning.testing import FakeChatServer


def draw_images(folder: Path, n: int, size: tuple[int, int] = (24, 16)) -> list[ImageItem]:
    """``n`` distinct small images (alternating JPEG and PNG), so each has its own server caption."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        ext = ".jpg" if i % 2 == 0 else ".png"
        path = folder / f"img_{i:03d}{ext}"
        im = Image.new("RGB", size, (i * 37 % 256, i * 91 % 256, i * 13 % 256))
        im.putpixel((i % size[0], 0), (255 - i % 256, 0, 0))
        im.save(path)
        items.append(ImageItem(path.name, path))
    return items


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, deadline: float = 60.0) -> None:
    """Wait until the file ``path`` that the process ``proc`` appends to has ``n`` lines."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before writing {n} lines to {path.name}")
        time.sleep(0.02)
    pytest.fail("no progress")


@pytest.fixture
def images(tmp_path: Path) -> list[ImageItem]:
    return draw_images(tmp_path / "images", 12)


@pytest.fixture
def server():
    with FakeChatServer() as srv:
        yield srv


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_vlm(folder: Path, corpus: list[str] | None = None) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Llama decoder, byte-level BPE tokenizer trained by
    ``tokenizers`` on ``corpus``, a chat template) saved with its processor to ``folder``."""
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
    corpus = corpus or [PAPER_PROMPT, "user: assistant: a dog on a red mat next to a house"]
    bpe.train_from_iterator(corpus * 5, trainer)
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
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
