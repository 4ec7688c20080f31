"""Correlation scores for new data: TMR's strong/weak weights of the original and the generated image.

The fusion module weights the full-image path by ``strong`` and the object path by ``weak``
(reference-behaviour §1.5; strong + weak = 1). Two ways to produce them:

- **uniform** (the documented default when a data set has none): strong = weak = 0.5 for both images, the
  same value the data layer falls back to (``camim.data.auxiliary.UNIFORM_SCORE``).
- **itm**: an image-text matching model from transformers, ViLT's ``ViltForImageAndTextRetrieval`` (default
  ``dandelin/vilt-b32-finetuned-coco``). With p = sigmoid((logit - bias) / temperature) the ITM probability
  that the post's text matches the image, strong = p and weak = 1 - p.

How this differs from TMR: TMR's "Multimodal Divergence Estimator" is a ViLT fine-tuned with a 3-way head on
its own labels; strong and weak are the softmax probabilities of classes 2 and 1 renormalised to sum to 1
(class 0 dropped). Those weights and that head were not released, so we use a public 2-way notion (does the
text match the image?). The COCO retrieval head is trained to rank candidates, so p is a monotone score
rather than a calibrated probability; ``bias`` and ``temperature`` shift and sharpen it (the released scores
are very skewed: strong has median 0.0005 on train). Models trained on the released scores will see a
different distribution.

Files (released format, read by ``camim.data.auxiliary.read_score_file``): ``txt/{split}_weight_strong.txt``,
``txt/{split}_weight_weak.txt``, ``txt/dif_{split}_weight_strong.txt``, ``txt/dif_{split}_weight_weak.txt``,
one ``img_id<TAB>float`` line per sample in sample order. The reader keys by img_id with the last line
winning (as the released loader does), so samples sharing an image get the score of the last of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from camim.data.auxiliary import UNIFORM_SCORE
from camim.data.images import find_image, load_image
from camim.data.layout import DataLayout
from camim.data.types import Scores
from camim.errors import CamimError, DataError
from camim.io import atomic_write_text, short_hash
from camim.preprocess.common import (
    PrepareReport,
    ProgressLog,
    load_split,
    loading_pretrained,
    progress_bar,
    progress_path,
    resolve_device,
)

DEFAULT_ITM_MODEL = "dandelin/vilt-b32-finetuned-coco"


@dataclass
class ScoreConfig:
    """Settings of the image-text matching estimator."""

    model: str = DEFAULT_ITM_MODEL  # hub id or local folder of a ViltForImageAndTextRetrieval checkpoint
    revision: str | None = None
    bias: float = 0.0  # p = sigmoid((logit - bias) / temperature)
    temperature: float = 1.0
    device: str | None = None

    def output_settings(self) -> dict:
        d = asdict(self)
        d.pop("device")
        return d


def uniform_scores() -> Scores:
    """The documented default: strong = weak = 0.5 for the original and the generated image."""
    return Scores(UNIFORM_SCORE, UNIFORM_SCORE, UNIFORM_SCORE, UNIFORM_SCORE)


class ScoreEstimator:
    """ITM probability of (image, text) with a ViLT retrieval model; ``estimator(image, text) -> (strong, weak)``."""

    def __init__(self, model, processor, config: ScoreConfig | None = None):
        self.config = config or ScoreConfig()
        if getattr(model.config, "model_type", "") != "vilt":
            raise CamimError(
                f"score model {self.config.model!r} is not a ViLT model (model_type 'vilt' expected)"
            )
        if self.config.temperature <= 0:
            raise CamimError(f"temperature must be > 0, got {self.config.temperature}")
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, config: ScoreConfig | None = None) -> ScoreEstimator:
        """Load ``config.model`` (ViltForImageAndTextRetrieval + its processor) on ``config.device``."""
        config = config or ScoreConfig()
        from transformers import AutoConfig, AutoProcessor, ViltForImageAndTextRetrieval

        with loading_pretrained("score model", config.model):
            model_config = AutoConfig.from_pretrained(config.model, revision=config.revision)
            if model_config.model_type != "vilt":
                raise CamimError(
                    f"score model {config.model!r} is a {model_config.model_type!r} model; "
                    "a ViLT image-text retrieval checkpoint is expected"
                )
            processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
            model = ViltForImageAndTextRetrieval.from_pretrained(config.model, revision=config.revision)
        return cls(model.to(resolve_device(config.device)), processor, config)

    def probability(self, image: Image.Image, text: str) -> float:
        """p in (0, 1): how well ``text`` matches ``image`` (text truncated to the model's 40 positions)."""
        import torch

        max_len = self.model.config.max_position_embeddings
        inputs = self.processor(
            images=image.convert("RGB"),
            text=text,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=max_len,
        ).to(self.device)
        with torch.inference_mode():
            logit = float(self.model(**inputs).logits[0, 0])
        z = (logit - self.config.bias) / self.config.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def __call__(self, image: Image.Image, text: str) -> tuple[float, float]:
        p = self.probability(image, text)
        return p, 1.0 - p  # strong = p, weak = 1 - p


def estimate_scores(
    image: Image.Image | None,
    text: str,
    generated_image: Image.Image | None = None,
    estimator: ScoreEstimator | None = None,
    config: ScoreConfig | None = None,
) -> Scores:
    """The four scores of one post; an absent image gets the uniform 0.5/0.5 for its pair."""
    if image is None and generated_image is None:
        return uniform_scores()
    estimator = estimator or ScoreEstimator.from_pretrained(config)
    strong_ori = estimator.probability(image, text) if image is not None else UNIFORM_SCORE
    strong_dif = (
        estimator.probability(generated_image, text) if generated_image is not None else UNIFORM_SCORE
    )
    return Scores(
        weak_ori=1.0 - strong_ori, strong_ori=strong_ori, weak_dif=1.0 - strong_dif, strong_dif=strong_dif
    )


def prepare_scores(
    data_dir: str | Path,
    split: str,
    estimator: ScoreEstimator | None = None,
    layout: DataLayout | None = None,
    overwrite: bool = False,
    on_missing: Literal["raise", "fallback"] = "raise",
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool = True,
) -> PrepareReport:
    """Write the four score files of ``split``: uniform 0.5 when ``estimator`` is None, else ITM scores of
    each sample's text against its original and its generated image.

    Resumable: samples in ``progress/scores_{split}.jsonl`` with the same settings are not recomputed. A
    missing image raises ``DataError`` naming it; with ``on_missing="fallback"`` that pair gets 0.5/0.5,
    counted (``missing_image`` / ``missing_generated_image``), and is retried on the next run.
    """
    layout = layout or DataLayout()
    data_dir = Path(data_dir)
    samples, problems = load_split(data_dir, split, layout, on_error)
    report = PrepareReport(step="scores", split=split, total=len(samples))
    if problems:
        report.count("skipped_bad_lines", len(problems))
    if estimator is None:
        report.notes.append("uniform default: strong = weak = 0.5 for every sample")
        strong = {ex.index: (UNIFORM_SCORE, UNIFORM_SCORE) for ex in samples}
        report.processed = len(samples)
    else:
        strong = _estimated_scores(
            data_dir, split, samples, estimator, layout, overwrite, on_missing, report, progress
        )
    for prefix, pos in (("ori", 0), ("dif", 1)):
        for kind in ("strong", "weak"):
            template = getattr(layout, f"{kind}_{prefix}")
            lines = []
            for ex in samples:
                s = strong[ex.index][pos]
                lines.append(f"{ex.img_id}\t{s if kind == 'strong' else 1.0 - s!r}\n")
            path = layout.path(data_dir, template, split)
            atomic_write_text(path, "".join(lines))
            report.outputs.append(str(path))
    return report


def _estimated_scores(
    data_dir: Path, split: str, samples, estimator: ScoreEstimator, layout: DataLayout, overwrite: bool,
    on_missing: str, report: PrepareReport, progress: bool,
) -> dict[int, tuple[float, float]]:  # fmt: skip
    """(strong_ori, strong_dif) per sample: from the progress log when done with the same settings, else
    estimated now (and logged when both images were there)."""
    log = ProgressLog(progress_path(data_dir, "scores", split), estimator.config.output_settings())
    report.note_log(log)
    dirs = {
        "ori": layout.path(data_dir, layout.image_dir, split),
        "dif": layout.path(data_dir, layout.generated_image_dir, split),
    }
    if on_missing == "raise" and not dirs["dif"].is_dir():
        raise DataError(
            "no generated images: run `camim prepare translate` first, or pass --on-missing fallback "
            "(uniform scores for the generated image)",
            dirs["dif"],
        )
    strong: dict[int, tuple[float, float]] = {}
    for ex in progress_bar(samples, len(samples), f"scores {split}", progress):
        rec = None if overwrite else log.done.get(str(ex.index))
        if rec is not None and (rec.get("img_id"), rec.get("text")) == (ex.img_id, short_hash(ex.text)):
            report.skipped_done += 1
            strong[ex.index] = (rec["strong_ori"], rec["strong_dif"])
            continue  # (a sample that changed since is redone)
        values, complete = _pair_scores(ex, dirs, estimator, on_missing, report)
        if complete:
            logged = {"img_id": ex.img_id, "text": short_hash(ex.text), "strong_ori": values["ori"],
                      "strong_dif": values["dif"]}  # fmt: skip
            log.append(str(ex.index), logged)
        strong[ex.index] = (values["ori"], values["dif"])
        report.processed += 1
    return strong


def _pair_scores(
    ex, dirs: dict[str, Path], estimator: ScoreEstimator, on_missing: str, report: PrepareReport
):
    """The sample's text against its original and its generated image -> ({"ori", "dif"}, both found); a
    missing image raises, or under fallback gets the uniform score, counted."""
    values, complete = {}, True
    for which, folder in dirs.items():
        try:
            image = load_image(find_image(folder, ex.img_id) or folder / ex.img_id)
        except DataError:
            if on_missing == "raise":
                raise
            report.count("missing_image" if which == "ori" else "missing_generated_image")
            values[which], complete = UNIFORM_SCORE, False
            continue
        values[which] = estimator.probability(image, ex.text)
    return values, complete
