"""Translation images for new data: TMR's back-translation, a Stable Diffusion image generated from the post.

As in TMR's ``Back Translation/diffusion.py`` (MNRE branch): ``stabilityai/stable-diffusion-2`` with the Euler
scheduler (fp16 on GPU), prompt = the sample's tokens joined by spaces, one image per ``img_id`` made from the
text of its first sample, saved as ``diffusion_pic/{split}/<img_id>`` (768 x 768 with SD-2's default size).
Unlike TMR, each image has a fixed seed derived from its ``img_id`` (:func:`image_seed`), so a rerun or a
resumed run reproduces the same image on the same hardware. Any text-to-image model id diffusers can load
works. diffusers is an optional extra (``pip install 'camim[diffusion]'``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from camim.data.images import find_image
from camim.data.layout import DataLayout
from camim.errors import CamimError, DataError
from camim.io import IMAGE_SUFFIXES, atomic_save_image
from camim.preprocess.common import (
    PrepareReport,
    ProgressLog,
    is_valid_image,
    load_split,
    loading_pretrained,
    progress_bar,
    progress_path,
    resolve_device,
)

DEFAULT_DIFFUSION_MODEL = "stabilityai/stable-diffusion-2"


def import_diffusers():
    """The ``diffusers`` module, or a ``CamimError`` saying what to install."""
    try:
        import diffusers
    except ImportError:
        raise CamimError(
            "translation images need the optional 'diffusers' package: pip install 'camim[diffusion]' "
            "(or: pip install diffusers accelerate)"
        ) from None
    return diffusers


@dataclass
class TranslationConfig:
    """Settings of the text-to-image model (defaults: TMR's SD-2 + Euler, diffusers' sampling defaults)."""

    model: str = DEFAULT_DIFFUSION_MODEL  # hub id or local folder of any diffusers text-to-image pipeline
    revision: str | None = None
    scheduler: Literal["euler", "default"] = (
        "euler"  # "euler": EulerDiscreteScheduler as TMR; else the model's
    )
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None  # None: the model's default (768 for SD-2)
    width: int | None = None
    seed: int = 0  # base seed; each image's seed is image_seed(img_id, seed)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: float16 on CUDA, float32 on CPU
    device: str | None = None

    def output_settings(self) -> dict:
        """The settings that change the images (recorded in the progress log)."""
        d = asdict(self)
        d.pop("device")
        return d


def image_seed(img_id: str, base_seed: int = 0) -> int:
    """The fixed seed of one image: 32 bits of SHA-256 of ``"{base_seed}:{img_id}"`` (stable across runs)."""
    digest = hashlib.sha256(f"{base_seed}:{img_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def translation_prompt(tokens: Sequence[str]) -> str:
    """TMR's prompt: the tokens joined by single spaces."""
    return " ".join(tokens)


class TranslationGenerator:
    """A diffusers text-to-image pipeline with a seeded call per image.

    ``generator.generate(prompt, seed) -> image``; ``generator(text) -> image`` is the ``image_generator`` the
    Predictor takes (seed derived from the text).
    """

    def __init__(self, pipeline, config: TranslationConfig | None = None):
        self.pipeline = pipeline
        self.config = config or TranslationConfig()
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)

    @classmethod
    def from_pretrained(cls, config: TranslationConfig | None = None) -> TranslationGenerator:
        """Load ``config.model`` with diffusers' AutoPipelineForText2Image on ``config.device``."""
        import torch

        config = config or TranslationConfig()
        diffusers = import_diffusers()
        device = resolve_device(config.device)
        dtype = config.dtype
        if dtype == "auto":
            dtype = "float16" if device.type == "cuda" else "float32"
        with loading_pretrained("diffusion model", config.model), warnings.catch_warnings():
            # newer diffusers prefer dtype=, older ones only know torch_dtype=
            warnings.simplefilter("ignore", FutureWarning)
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
                config.model, revision=config.revision, torch_dtype=getattr(torch, dtype)
            )
        if config.scheduler == "euler":
            pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        return cls(pipe.to(device), config)

    def generate(self, prompt: str, seed: int) -> Image.Image:
        """One image for ``prompt`` from a CPU generator seeded with ``seed`` (device-independent noise)."""
        import torch

        cfg = self.config
        generator = torch.Generator("cpu").manual_seed(int(seed))
        out = self.pipeline(
            prompt,
            height=cfg.height,
            width=cfg.width,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=generator,
        )
        return out.images[0]

    def __call__(self, text: str) -> Image.Image:
        return self.generate(text, image_seed(text, self.config.seed))


def generate_translation(
    text: str | Sequence[str],
    generator: TranslationGenerator | None = None,
    config: TranslationConfig | None = None,
    seed: int | None = None,
) -> Image.Image:
    """The translation image of one post (``text`` or its tokens); ``seed`` defaults to one derived from it."""
    generator = generator or TranslationGenerator.from_pretrained(config)
    prompt = text if isinstance(text, str) else translation_prompt(text)
    return generator.generate(prompt, image_seed(prompt, generator.config.seed) if seed is None else seed)


def prepare_translations(
    data_dir: str | Path,
    split: str,
    generator: TranslationGenerator,
    layout: DataLayout | None = None,
    overwrite: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> PrepareReport:
    """Generate ``diffusion_pic/{split}/<img_id>`` for every image of ``split`` (from its first sample's text).

    Resumable: an image whose output file exists and decodes is skipped (so released TMR images are kept);
    pass ``overwrite=True`` to regenerate, e.g. after changing the model. Images are written atomically and
    each one is logged (prompt, seed, settings) in ``progress/translate_{split}.jsonl``.
    """
    layout = layout or DataLayout()
    data_dir = Path(data_dir)
    samples, problems = load_split(data_dir, split, layout, on_error)
    first: dict[str, list[str]] = {}
    for ex in samples:
        if Path(ex.img_id).name != ex.img_id or ex.img_id in (".", ".."):
            raise DataError(f"img_id {ex.img_id!r} is not a plain file name", ex.source)
        first.setdefault(ex.img_id, ex.tokens)
    report = PrepareReport(step="translate", split=split, total=len(first))
    if problems:
        report.count("skipped_bad_lines", len(problems))
    log = ProgressLog(progress_path(data_dir, "translate", split), generator.config.output_settings())
    report.note_log(log)
    out_dir = layout.path(data_dir, layout.generated_image_dir, split)
    for img_id, tokens in progress_bar(first.items(), len(first), f"translate {split}", progress):
        # a bare or integer img_id (earlier MNRE releases) gets a .png file, which the data layer finds
        out_path = find_image(out_dir, img_id) or out_dir / (
            img_id if Path(img_id).suffix.lower() in IMAGE_SUFFIXES else img_id + ".png"
        )
        if not overwrite and is_valid_image(out_path):
            report.skipped_done += 1
            continue
        prompt = translation_prompt(tokens)
        seed = image_seed(img_id, generator.config.seed)
        image = generator.generate(prompt, seed)
        atomic_save_image(image, out_path)
        log.append(img_id, {"prompt": prompt, "seed": seed, "size": list(image.size)})
        report.processed += 1
    report.outputs.append(str(out_dir))
    return report
