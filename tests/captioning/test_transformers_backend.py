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

from .conftest import build_tiny_vlm, draw_images


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny-llava"))


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
