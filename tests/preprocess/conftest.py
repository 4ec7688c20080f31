"""Tiny random detector, diffusion and ITM models saved to temp folders, and a small data folder with
Pillow-drawn images, for the preprocessing tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from tests.factories import TINY_RESNET

SAMPLES = [
    {
        "token": "@Bill_Cosby visits the Hollywood Walk of Fame".split(),
        "h": {"name": "@Bill_Cosby", "pos": [0, 1]},
        "t": {"name": "Hollywood Walk of Fame", "pos": [3, 7]},
        "img_id": "a.jpg",
        "relation": "/per/misc/present_in",
    },
    {
        "token": "Bill Cosby and Jim at the Hollywood Walk".split(),
        "h": {"name": "Bill Cosby", "pos": [0, 2]},
        "t": {"name": "Jim", "pos": [3, 4]},
        "img_id": "a.jpg",
        "relation": "/per/per/peer",
    },
    {
        "token": "RT Circle Undone for Arkham Horror LCG".split(),
        "h": {"name": "Circle Undone", "pos": [1, 3]},
        "t": {"name": "Arkham Horror LCG", "pos": [4, 7]},
        "img_id": "b.png",
        "relation": "/misc/misc/part_of",
    },
]


def draw(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.new("RGB", size, (seed * 37 % 255, seed * 91 % 255, seed * 53 % 255))
    d = ImageDraw.Draw(img)
    d.rectangle([4 + seed, 4, 30, 40], fill=(200, 40, 90))
    d.ellipse([34, 6, 60, 44], fill=(10, 220, 120))
    return img


def write_data_dir(root: Path, split: str = "train", generated: bool = False) -> Path:
    """An MNRE-layout folder: txt/ours_{split}.txt (Python literals) and img_org/{split}/ images."""
    (root / "txt").mkdir(parents=True, exist_ok=True)
    (root / "txt" / f"ours_{split}.txt").write_text(
        "\n".join(repr(s) for s in SAMPLES) + "\n", encoding="utf-8"
    )
    for k, img_id in enumerate(sorted({s["img_id"] for s in SAMPLES})):
        (root / "img_org" / split).mkdir(parents=True, exist_ok=True)
        draw(k).save(root / "img_org" / split / img_id)
        if generated:
            (root / "diffusion_pic" / split).mkdir(parents=True, exist_ok=True)
            draw(k + 5, (32, 32)).save(root / "diffusion_pic" / split / img_id)
    return root


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_data_dir(tmp_path / "data", generated=True)


def clip_tokenizer(max_length: int = 16):
    """A character-level CLIP BPE tokenizer (byte alphabet, no merges); specials last so bos/eos ids are > 0."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _clip_text_config(tok) -> dict:
    n = len(tok.get_vocab())
    return dict(
        vocab_size=n,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
        bos_token_id=n - 2,
        eos_token_id=n - 1,
        pad_token_id=n - 1,
    )


def _owl(folder: Path, version: int) -> Path:
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessorPil,
        OwlViTProcessor,
    )

    tok = clip_tokenizer()
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    if version == 2:
        model = Owlv2ForObjectDetection(
            Owlv2Config(text_config=_clip_text_config(tok), vision_config=vision, projection_dim=16)
        )
        proc = Owlv2Processor(
            image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok
        )
    else:
        model = OwlViTForObjectDetection(
            OwlViTConfig(text_config=_clip_text_config(tok), vision_config=vision, projection_dim=16)
        )
        ip = OwlViTImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
        proc = OwlViTProcessor(image_processor=ip, tokenizer=tok)
    with torch.no_grad():  # box head -> 0: boxes are the patch-grid priors (random ones are degenerate)
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def owlvit_dir(tmp_path_factory) -> Path:
    """A tiny random OWL-ViT detector (1-layer text and vision towers, 32 px images, 16 boxes)."""
    return _owl(tmp_path_factory.mktemp("tiny_owlvit"), 1)


@pytest.fixture(scope="session")
def owlv2_dir(tmp_path_factory) -> Path:
    """A tiny random OWLv2 detector (its image processor needs scipy)."""
    pytest.importorskip("scipy")
    return _owl(tmp_path_factory.mktemp("tiny_owlv2"), 2)


@pytest.fixture(scope="session")
def grounding_dino_dir(tmp_path_factory) -> Path:
    """A tiny random Grounding DINO (ResNet backbone 8..32 channels, d_model 32, 1-layer BERT text tower)."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        ResNetConfig,
    )

    folder = tmp_path_factory.mktemp("tiny_grounding_dino")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "bill", "cosby", "walk", "of", "fame"]
    vocab += list(letters) + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a dict); the 4.x `vocab_file=` keyword is ignored there
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    backbone = ResNetConfig(**TINY_RESNET, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    cfg = GroundingDinoConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=10,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    GroundingDinoForObjectDetection(cfg).save_pretrained(folder)
    ip = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory) -> Path:
    """A tiny random Stable Diffusion pipeline (UNet 8/16 channels, 2-block VAE, 1-layer CLIP text encoder)."""
    pytest.importorskip("diffusers")
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path_factory.mktemp("tiny_sd")
    tok = clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(tok)))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vilt_dir(tmp_path_factory) -> Path:
    """A tiny random ViLT image-text retrieval model with a WordPiece tokenizer."""
    import torch
    from transformers import (
        BertTokenizerFast,
        ViltConfig,
        ViltForImageAndTextRetrieval,
        ViltImageProcessorPil,
        ViltProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny_vilt")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "of", "at", "and"]
    vocab += list(letters) + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a dict); the 4.x `vocab_file=` keyword is ignored there
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    cfg = ViltConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    ViltForImageAndTextRetrieval(cfg).save_pretrained(folder)
    ViltProcessor(
        image_processor=ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=8), tokenizer=tok
    ).save_pretrained(folder)
    return folder


class CallCounter:
    """Wraps a callable (a model or a pipeline) and counts the calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
