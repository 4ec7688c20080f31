"""Object grounding for new data: the m object crops of the original image and the m boxes on the generated
(translation) image, made with an open-vocabulary detector from transformers.

The released crops came from a 2019 one-stage visual grounding toolkit that no longer runs. We replace it
with zero-shot detection (OWLv2 by default; OWL-ViT and Grounding DINO also work), queried with the head
and tail mentions and the sample's grounding phrase (entity names and types, as ``phrase_text_{split}.json``
holds). Detections of all queries are pooled, clipped to the image, boxes under ``min_box_size`` pixels
dropped, overlapping boxes suppressed (class-agnostic NMS, one crop per object), and the ``max_objects``
(m = 3) best above ``threshold`` kept.

Outputs, in the formats the data layer reads (``camim.data.auxiliary``):
- crops ``img_vg/{split}/crops/{index}_pred_crop_{n}.png`` and ``txt/mre_{split}_dict.json``
  = ``{"index": [crop names]}`` (the JSON form of ``mre_{split}_dict.pth``);
- ``txt/mre_dif_{split}_dict.json`` = ``{"index": [[x1, y1, x2, y2], ...]}`` in generated-image pixels
  (the JSON form of ``mre_dif_{split}_dict.pth``; the data layer crops them from the generated image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from PIL import Image

from camim.data.auxiliary import read_phrases
from camim.data.images import crop_box, find_image, load_image
from camim.data.layout import DataLayout
from camim.data.types import MNREExample
from camim.data.writers import write_index_dict_json
from camim.errors import CamimError, DataError
from camim.io import atomic_save_image
from camim.preprocess.common import (
    PrepareReport,
    ProgressLog,
    load_split,
    loading_pretrained,
    progress_bar,
    progress_path,
    resolve_device,
)

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
OWL_TYPES = ("owlvit", "owlv2")
GROUNDING_DINO_TYPES = ("grounding-dino", "mm-grounding-dino")
CROP_NAME = "{index}_pred_crop_{n}.png"

Box = tuple[float, float, float, float]
ImageKind = Literal["original", "generated"]


@dataclass
class DetectorConfig:
    """Settings of the open-vocabulary detector and of the box selection."""

    model: str = DEFAULT_DETECTOR  # hub id or local folder (OWLv2, OWL-ViT or Grounding DINO)
    revision: str | None = None
    threshold: float = 0.1  # minimum detection score (sigmoid probability)
    text_threshold: float = 0.25  # Grounding DINO only: token score needed to name a box
    max_objects: int = 3  # m, as in the released models
    nms_iou: float = 0.5  # boxes overlapping a better one by more than this IoU are dropped
    min_box_size: float = 1.0  # boxes under this many pixels (width or height, after clipping) are dropped
    default_queries: tuple[str, ...] = ("a person", "an object")  # used when a call gives no query
    device: str | None = None  # None: CUDA when available

    def selection_settings(self) -> dict:
        """The settings that change the output (recorded in the progress log)."""
        d = asdict(self)
        d.pop("device")
        return d


@dataclass
class Detection:
    """One kept box: (x1, y1, x2, y2) in image pixels, its score and the query that found it."""

    box: Box
    score: float
    label: str


def entity_query(name: str) -> str:
    """A detector query from an entity mention: a leading retweet marker "RT" dropped, ``@``/``#`` stripped,
    underscores as spaces."""
    words = re.sub(r"[@#]", "", name).replace("_", " ").split()
    if words and words[0] == "RT":
        words = words[1:]
    return " ".join(words)


def build_queries(example: MNREExample, phrase: str | None = None) -> list[str]:
    """The queries of one sample: head mention, tail mention, then its grounding phrase (distinct, non-empty)."""
    out: list[str] = []
    for q in (entity_query(example.head.name), entity_query(example.tail.name), entity_query(phrase or "")):
        if q and q.lower() not in (o.lower() for o in out):
            out.append(q)
    return out


def released_phrase(example: MNREExample, clean: bool = False) -> str:
    """A grounding phrase as the released ``phrase_text`` files begin: head and tail names with every ``"RT"``
    and ``"@"`` removed (substring removal, so "ROBERTO" becomes "ROBEO"; this matches 100% of the released
    phrases as a prefix, which may go on with entity-type words we cannot produce). ``clean=True`` uses
    :func:`entity_query` instead (``@``/``#`` stripped, underscores as spaces, words kept intact).
    """
    if clean:
        return " ".join(q for q in (entity_query(example.head.name), entity_query(example.tail.name)) if q)

    def name(n: str) -> str:
        return n.replace("RT", "").replace("@", "").strip()

    return f"{name(example.head.name)} {name(example.tail.name)}"


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_boxes(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    labels: Sequence[str],
    width: int,
    height: int,
    max_objects: int = 3,
    nms_iou: float = 0.5,
    min_box_size: float = 1.0,
) -> list[Detection]:
    """Clip to the image, drop boxes under ``min_box_size`` px, greedy class-agnostic NMS, best ``max_objects``."""
    cands = []
    for box, score, label in zip(boxes, scores, labels):
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, y1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        x2, y2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if x2 - x1 < min_box_size or y2 - y1 < min_box_size:
            continue
        cands.append(Detection((x1, y1, x2, y2), float(score), str(label)))
    cands.sort(key=lambda d: -d.score)
    kept: list[Detection] = []
    for d in cands:
        if len(kept) >= max_objects:
            break
        if all(box_iou(d.box, k.box) <= nms_iou for k in kept):
            kept.append(d)
    return kept


class ObjectDetector:
    """An open-vocabulary detector (transformers' zero-shot object detection models) with box selection.

    ``detector.detect(image, queries) -> list[Detection]``; ``detector(image, queries=None) -> list[crop]``
    is the ``object_finder`` the Predictor takes (without queries it uses ``config.default_queries``).
    """

    def __init__(self, model, processor, config: DetectorConfig | None = None):
        self.config = config or DetectorConfig()
        self.model = model.eval()
        self.processor = processor
        self.model_type = getattr(model.config, "model_type", "")
        if self.model_type not in OWL_TYPES + GROUNDING_DINO_TYPES:
            raise CamimError(
                f"detector {self.config.model!r} is a {self.model_type!r} model; "
                f"supported: {', '.join(OWL_TYPES + GROUNDING_DINO_TYPES)}"
            )
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, config: DetectorConfig | None = None) -> ObjectDetector:
        """Load ``config.model`` (hub id or local folder) with its processor, on ``config.device``."""
        config = config or DetectorConfig()
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        with loading_pretrained("detector", config.model):
            processor = AutoProcessor.from_pretrained(config.model, revision=config.revision)
            model = AutoModelForZeroShotObjectDetection.from_pretrained(
                config.model, revision=config.revision
            )
        return cls(model.to(resolve_device(config.device)), processor, config)

    def detect(self, image: Image.Image, queries: Sequence[str] | None = None) -> list[Detection]:
        """The best ``max_objects`` boxes of ``image`` for ``queries``, best first."""
        import torch

        cfg = self.config
        queries = [q for q in (entity_query(q) for q in (queries or ())) if q] or list(cfg.default_queries)
        image = image.convert("RGB")
        width, height = image.size
        with torch.inference_mode():
            if self.model_type in OWL_TYPES:
                max_len = self.model.config.text_config.max_position_embeddings
                inputs = self.processor(
                    text=[queries],
                    images=[image],
                    return_tensors="pt",
                    padding="max_length",
                    truncation=True,
                    max_length=max_len,
                )
                outputs = self.model(**self._to_device(inputs))
                res = self.processor.post_process_grounded_object_detection(
                    outputs, threshold=cfg.threshold, target_sizes=[(height, width)], text_labels=[queries]
                )[0]
            else:  # Grounding DINO: one "a. b. c." prompt; labels come back from the matched tokens
                labels = [q.replace(".", " ").strip().lower() for q in queries]
                inputs = self.processor(images=image, text=[labels], return_tensors="pt")
                inputs = self._to_device(inputs)
                outputs = self.model(**inputs)
                res = self.processor.post_process_grounded_object_detection(
                    outputs,
                    inputs["input_ids"],
                    threshold=cfg.threshold,
                    text_threshold=cfg.text_threshold,
                    target_sizes=[(height, width)],
                )[0]
        return select_boxes(
            res["boxes"].float().cpu().tolist(),
            res["scores"].float().cpu().tolist(),
            list(res["text_labels"]),
            width,
            height,
            cfg.max_objects,
            cfg.nms_iou,
            cfg.min_box_size,
        )

    def _to_device(self, inputs):
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def __call__(self, image: Image.Image, queries: Sequence[str] | None = None) -> list[Image.Image]:
        return crop_objects(image, self.detect(image, queries))


def detect_objects(
    image: Image.Image,
    queries: Sequence[str],
    detector: ObjectDetector | None = None,
    config: DetectorConfig | None = None,
) -> list[Detection]:
    """Detect the m best objects of ``image`` for ``queries`` (loads ``config.model`` when no detector)."""
    detector = detector or ObjectDetector.from_pretrained(config)
    return detector.detect(image, queries)


def crop_objects(image: Image.Image, detections: Sequence[Detection]) -> list[Image.Image]:
    """The crops of ``detections`` (boxes under 1 px are skipped)."""
    return [c for c in (crop_box(image, d.box) for d in detections) if c is not None]


def _json_template(templates: tuple[str, ...], fallback: str) -> str:
    return next((t for t in templates if t.endswith(".json")), fallback)


@dataclass
class _Kind:
    step: str
    image_dir: str
    dict_template: str
    templates: tuple[str, ...]  # what the data layer tries, in order


def _kind(kind: ImageKind, layout: DataLayout) -> _Kind:
    if kind == "original":
        tpl = _json_template(layout.objects, "txt/mre_{split}_dict.json")
        return _Kind("objects", layout.image_dir, tpl, layout.objects)
    if kind == "generated":
        tpl = _json_template(layout.generated_boxes, "txt/mre_dif_{split}_dict.json")
        return _Kind("generated_objects", layout.generated_image_dir, tpl, layout.generated_boxes)
    raise CamimError(f"unknown image kind {kind!r}: expected 'original' or 'generated'")


def prepare_objects(
    data_dir: str | Path,
    split: str,
    detector: ObjectDetector,
    images: Sequence[ImageKind] = ("original", "generated"),
    layout: DataLayout | None = None,
    overwrite: bool = False,
    on_missing: Literal["raise", "fallback"] = "raise",
    on_error: Literal["raise", "skip"] = "raise",
    write_phrases: bool = True,
    progress: bool = True,
) -> list[PrepareReport]:
    """Detect objects for every sample of ``split`` and write crops and the JSON dictionaries (one report per
    image kind). Resumable: samples already in the progress log (same detector settings) are skipped.

    A missing/corrupt image raises ``DataError`` naming it; with ``on_missing="fallback"`` the sample gets an
    empty list (the data layer then pads with zero images), counted as ``missing_image``, and is retried on
    the next run. When the split has no phrase file and ``write_phrases``, one is written as the released
    files hold it (:func:`released_phrase`).
    """
    layout = layout or DataLayout()
    data_dir = Path(data_dir)
    samples, problems = load_split(data_dir, split, layout, on_error)
    phrase_path = layout.path(data_dir, layout.phrases, split)
    phrases = read_phrases(phrase_path) if phrase_path.is_file() else {}
    reports: list[PrepareReport] = []
    wrote_phrases = not phrases and write_phrases
    if wrote_phrases:
        phrases = {ex.index: released_phrase(ex) for ex in samples}
        write_index_dict_json(phrases, phrase_path)
    for kind in images:
        k = _kind(kind, layout)
        report = PrepareReport(step=k.step, split=split, total=len(samples))
        if problems:
            report.count("skipped_bad_lines", len(problems))
        if wrote_phrases and not reports:
            report.outputs.append(str(phrase_path))
        settings = {"kind": kind, **detector.config.selection_settings()}
        log = ProgressLog(progress_path(data_dir, k.step, split), settings)
        report.note_log(log)
        crops_dir = layout.path(data_dir, layout.crops_dir, split)
        job = _ObjectJob(kind, detector, crops_dir, report, log, overwrite)
        image_dir = layout.path(data_dir, k.image_dir, split)
        if kind == "generated" and on_missing == "raise" and not image_dir.is_dir():
            raise DataError(
                "no generated images: run `camim prepare translate` first, or pass --images original",
                image_dir,
            )
        entries: dict[int, list] = {}
        for ex in progress_bar(samples, len(samples), f"{k.step} {split}", progress):
            queries = build_queries(ex, phrases.get(ex.index))
            entries[ex.index] = job.objects(ex, queries, image_dir, on_missing)
        _write_dictionary(data_dir, split, layout, k, entries, report)
        reports.append(report)
    return reports


@dataclass
class _ObjectJob:
    """One image kind's detections, sample by sample: from the progress log when done with the same settings
    (and, for crops, their files still there), else detected now and appended to it."""

    kind: str
    detector: ObjectDetector
    crops_dir: Path
    report: PrepareReport
    log: ProgressLog
    overwrite: bool

    def objects(self, ex, queries, image_dir: Path, on_missing: str) -> list:
        """The sample's crop names (original) or boxes (generated); ``[]`` for a missing image under fallback."""
        rec = self._done(ex, queries)
        if rec is not None:
            self.report.skipped_done += 1
        else:
            try:
                image = load_image(find_image(image_dir, ex.img_id) or image_dir / ex.img_id)
            except DataError:
                if on_missing == "raise":
                    raise
                self.report.count("missing_image")
                return []
            rec = self.log.append(str(ex.index), self._detect(ex, queries, image))
            self.report.processed += 1
        found = rec["crops"] if self.kind == "original" else rec["boxes"]
        if not found:
            self.report.count("no_objects_above_threshold")
        return found

    def _done(self, ex, queries) -> dict | None:
        rec = None if self.overwrite else self.log.done.get(str(ex.index))
        if rec is not None and (rec.get("img_id"), rec.get("queries")) != (ex.img_id, queries):
            return None  # the sample (or its phrase) changed since: redo it
        crops = rec.get("crops", []) if rec is not None else []
        if (
            rec is not None
            and self.kind == "original"
            and not all((self.crops_dir / c).is_file() for c in crops)
        ):
            return None  # a crop went missing: redo this sample
        return rec

    def _detect(self, ex, queries, image) -> dict:
        dets = self.detector.detect(image, queries)
        rec = {
            "img_id": ex.img_id,
            "queries": queries,
            "boxes": [[round(v, 2) for v in d.box] for d in dets],
            "scores": [round(d.score, 4) for d in dets],
            "labels": [d.label for d in dets],
        }
        if self.kind == "original":
            rec["crops"] = []
            for n, crop in enumerate(crop_objects(image, dets)):
                name = CROP_NAME.format(index=ex.index, n=n)
                atomic_save_image(crop, self.crops_dir / name)
                rec["crops"].append(name)
        return rec


def _write_dictionary(
    data_dir: Path, split: str, layout: DataLayout, k, entries: dict, report: PrepareReport
) -> None:
    """The split's object dictionary (JSON), and a note when an older file is read before it."""
    out_path = layout.path(data_dir, k.dict_template, split)
    write_index_dict_json(entries, out_path)
    report.outputs.append(str(out_path))
    first = layout.first_existing(data_dir, k.templates, split)
    if first is not None and first != out_path:
        report.notes.append(
            f"{first} exists and is read before {out_path.name}; move it away to use the new one"
        )
