"""``MNREDataset``: one split of an MNRE-style folder, yielding :class:`MNREExample` with the requested
modalities loaded and every other modality ``None``.

Text, captions, scores, phrases and object dictionaries are read once at construction (so bad files fail
early); images are opened lazily in ``__getitem__``. Fallbacks taken under ``on_missing="fallback"`` and
lines skipped under ``on_error="skip"`` are counted in ``report`` (image fallbacks are counted each time an
item is loaded, in the process that loads it).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch.utils.data

from camim.data.auxiliary import ScoreTable, read_box_dict, read_object_dict, read_phrases, read_score_table
from camim.data.captions import Captions, deranged_lookup, read_captions
from camim.data.images import ImageLimits, crop_box, find_image, image_candidates, load_image
from camim.data.labels import LabelSet
from camim.data.layout import SPLITS, DataLayout
from camim.data.samples import read_relations, read_samples
from camim.data.types import MODALITIES, MNREExample
from camim.errors import DataError
from camim.io import DEFAULT_ENCODING

OnMissing = Literal["raise", "fallback"]


def default_labels(
    data_dir: str | Path,
    layout: DataLayout | None = None,
    negative: str | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> LabelSet:
    """The rel2id file of ``data_dir`` if present, else labels inferred from every split's sample file.

    The negative label (excluded from micro P/R/F1) is ``negative`` when given, else the first of
    :data:`camim.data.labels.NEGATIVE_NAMES` present (``None``, ``none``, ``NA``, ``no_relation`` ...);
    :func:`camim.data.labels.negative_label_origin` says which of these it was."""
    layout = layout or DataLayout()
    rel2id = Path(data_dir) / layout.rel2id
    if rel2id.is_file():
        return LabelSet.from_rel2id(rel2id, negative=negative)
    relations: list[str] = []
    found = False
    for split in SPLITS:
        p = layout.first_existing(data_dir, layout.samples, split)
        if p is not None:
            found = True
            relations += read_relations(p, encoding)
    if not found or not relations:
        raise DataError(f"no {layout.rel2id} and no labelled samples to infer labels from", data_dir)
    return LabelSet.infer(relations, negative=negative)


def _checked_modalities(
    modalities: Iterable[str],
    caption_source: str | Path | None,
    on_error: str,
    on_missing: str,
    max_objects: int,
) -> tuple[str, ...]:
    """The requested modalities, once each and without ``caption`` when there is no caption source;
    ``ValueError`` for an unknown modality or option (a programming error, not a data problem)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_missing not in ("raise", "fallback"):
        raise ValueError(f"on_missing must be 'raise' or 'fallback', got {on_missing!r}")
    modalities = tuple(dict.fromkeys(modalities))
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    if max_objects < 0:
        raise ValueError("max_objects must be >= 0")
    return tuple(m for m in modalities if m != "caption") if caption_source is None else modalities


class MNREDataset(torch.utils.data.Dataset):
    """One split of an MNRE-style data folder (see ``docs/architecture.md``, Contract 1).

    ``caption_source`` is a source name (``minicpm``, ``caption``/``qwenvl``, ``cogvlm``, ``llavanext``,
    ``instruct``, ``blip2``; other names are used as file prefix), a path to a caption file, or ``None`` (no
    captions). ``modalities`` is a subset of :data:`MODALITIES`. ``on_error`` decides what a malformed sample
    line does (raise ``DataError`` / skip and count); ``on_missing`` what a missing caption, score, phrase,
    object entry or image does (raise ``DataError`` / documented fallback, counted): empty caption, uniform
    scores 0.5/0.5, empty phrase, no objects, ``None`` image, skipped crop. ``no_fallback`` names modalities
    that have no fallback whatever ``on_missing`` says (the original and generated images of a model that
    cannot run without them): their files are checked for existence at construction, and a missing one
    raises ``DataError`` then. ``require_labels=False`` accepts unlabelled samples (no ``relation``;
    ``label`` is then ``None``), e.g. posts to predict on. Image files are found by :func:`find_image`
    (``img_id`` as given, then with the usual extensions); text files are decoded strictly as ``encoding``.
    ``caption_shuffle_seed`` (a control, not for real use) gives each image the caption of another image of
    the split (:func:`~camim.data.captions.deranged_lookup`).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        labels: LabelSet | str | Path | None = None,
        caption_source: str | Path | None = "minicpm",
        modalities: Iterable[str] = ("caption",),
        max_objects: int = 3,
        layout: DataLayout | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        on_missing: OnMissing = "raise",
        negative: str | None = None,
        caption_model: str | None = None,
        image_limits: ImageLimits = ImageLimits(),
        require_labels: bool = True,
        no_fallback: Iterable[str] = (),
        encoding: str = DEFAULT_ENCODING,
        caption_shuffle_seed: int | None = None,
    ):
        modalities = _checked_modalities(modalities, caption_source, on_error, on_missing, max_objects)
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise DataError("data folder not found", self.data_dir)
        self.split = split
        self.layout = layout or DataLayout()
        self.modalities = modalities
        self.max_objects = max_objects
        self.on_missing = on_missing
        self.image_limits = image_limits
        self.no_fallback = frozenset(no_fallback)
        self.encoding = encoding
        self.caption_shuffle_seed = caption_shuffle_seed
        self.report: Counter[str] = Counter()
        self._image_paths: dict[tuple[str, str], Path | None] = {}  # (folder template, img_id) -> file
        self.problems: list[DataError] = []

        if isinstance(labels, (str, Path)):
            labels = LabelSet.from_rel2id(labels, negative=negative)
        self.labels: LabelSet = (
            labels if labels is not None else default_labels(self.data_dir, self.layout, negative, encoding)
        )
        self.samples_path = self.layout.samples_path(self.data_dir, split)
        self.examples: list[MNREExample] = read_samples(
            self.samples_path,
            self.labels,
            on_error,
            self.problems,
            require_relation=require_labels,
            encoding=encoding,
        )
        if self.problems:
            self.report["skipped_lines"] += len(self.problems)
        self._load_modalities(caption_source, caption_model)

    def _load_modalities(self, caption_source: str | Path | None, caption_model: str | None) -> None:
        """Read what the requested modalities need at construction (captions, scores, phrases, object
        dictionaries) and check that the images without a fallback exist; images are read per sample."""
        modalities = self.modalities
        self.caption_path: Path | None = None
        self._captions: list[str] | None = None
        if "caption" in modalities:
            self._captions = self._load_captions(caption_source, caption_model)
        self._scores = self._load_scores() if "scores" in modalities else None
        self._phrases = self._load_phrases() if "phrase" in modalities else None
        self._crop_names: dict[int, list[str]] | None = None
        self._boxes = None
        if "objects" in modalities:
            path = self._dict_path(self.layout.objects)
            self._crop_names = {} if path is None else read_object_dict(path)
        if "generated_objects" in modalities:
            path = self._dict_path(self.layout.generated_boxes)
            self._boxes = {} if path is None else read_box_dict(path)
        for modality, template in (
            ("image", self.layout.image_dir),
            ("generated_image", self.layout.generated_image_dir),
        ):
            if modality in self.no_fallback and modality in modalities:
                self._check_images_exist(modality, template)

    # ---- reading at init -------------------------------------------------------------------------------
    def _dict_path(self, templates: tuple[str, ...]) -> Path | None:
        """The first existing dictionary file; when none exists: DataError, or ``None`` under fallback
        (every sample then counts as ``missing_objects`` when loaded)."""
        p = self.layout.first_existing(self.data_dir, templates, self.split)
        if p is None and self.on_missing == "raise":
            raise DataError(f"none of {[t.format(split=self.split) for t in templates]} found", self.data_dir)
        return p

    def _missing(self, kind: str, err: DataError) -> None:
        if self.on_missing == "raise":
            raise err
        self.report[kind] += 1

    def _check_images_exist(self, modality: str, template: str) -> None:
        """Every sample's ``modality`` image file exists (one folder listing); ``DataError`` otherwise."""
        folder = self.layout.path(self.data_dir, template, self.split)
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing = [ex for ex in self.examples if self._image_path(template, ex.img_id, present) is None]
        if missing:
            ex = missing[0]
            raise DataError(
                f"{len(missing)} of {len(self.examples)} samples have no {modality.replace('_', ' ')} file "
                f"(first: {ex.img_id!r} of {ex.source}, tried {', '.join(image_candidates(ex.img_id)[:3])} ...); "
                "the model cannot run without it, so on_missing='fallback' does not apply to it",
                folder,
            )

    def _image_path(self, template: str, img_id: str, present: set[str] | None = None) -> Path | None:
        key = (template, img_id)
        if key not in self._image_paths:
            folder = self.layout.path(self.data_dir, template, self.split)
            self._image_paths[key] = find_image(folder, img_id, present)
        return self._image_paths[key]

    def _load_captions(self, source: str | Path, model: str | None) -> list[str]:
        path = Path(source)
        if not path.is_file():
            path = self.layout.caption_path(self.data_dir, str(source), self.split)
        self.caption_path = path
        captions: Captions = read_captions(path, model=model, encoding=self.encoding)
        lookup = captions.get
        if self.caption_shuffle_seed is not None:  # the shuffled-caption control
            lookup = deranged_lookup(lookup, (ex.img_id for ex in self.examples), self.caption_shuffle_seed)
        return self._texts_per_sample(
            lambda ex: lookup(ex.img_id),
            "missing_caption",
            lambda ex: f"no caption for image {ex.img_id!r}",
            path,
        )

    def _texts_per_sample(self, get, kind: str, describe, path: Path) -> list[str]:
        """``get(example)`` for every example; ``None`` raises ``DataError`` or becomes ``""``, counted."""
        out = []
        for ex in self.examples:
            text = get(ex)
            if text is None:
                self._missing(kind, DataError(f"{describe(ex)} ({ex.source})", path))
                text = ""
            out.append(text)
        return out

    def _load_scores(self) -> list:
        lay, root, split = self.layout, self.data_dir, self.split
        paths = {
            k: lay.path(root, getattr(lay, k), split)
            for k in ("weak_ori", "strong_ori", "weak_dif", "strong_dif")
        }
        table: ScoreTable = read_score_table(paths, on_missing_file=self.on_missing, encoding=self.encoding)
        out = []
        for ex in self.examples:
            scores, complete = table.lookup(ex.img_id)
            if not complete:
                missing = [str(paths[k]) for k in paths if ex.img_id not in getattr(table, k)]
                self._missing(
                    "missing_scores",
                    DataError(f"no score for image {ex.img_id!r} ({ex.source}) in {', '.join(missing)}"),
                )
            out.append(scores)
        return out

    def _load_phrases(self) -> list[str]:
        path = self.layout.path(self.data_dir, self.layout.phrases, self.split)
        if path.is_file():
            phrases = read_phrases(path, encoding=self.encoding)
        elif self.on_missing == "raise":
            raise DataError("phrase file not found", path)
        else:
            phrases = {}
        return self._texts_per_sample(
            lambda ex: phrases.get(ex.index),
            "missing_phrase",
            lambda ex: f"no phrase for sample {ex.index}",
            path,
        )

    # ---- lazy images -----------------------------------------------------------------------------------
    def _image(
        self, folder_template: str, name: str, kind: str, modality: str | None = None
    ) -> object | None:
        path = self._image_path(folder_template, name)
        if path is None:
            path = self.layout.path(self.data_dir, folder_template, self.split) / name
        try:
            return load_image(path, self.image_limits)
        except DataError as err:
            if modality in self.no_fallback:
                raise
            if kind.startswith("missing_") and path.is_file():
                kind = "corrupt_" + kind.removeprefix("missing_")
            self._missing(kind, err)
            return None

    def _objects(self, ex: MNREExample) -> list:
        assert self._crop_names is not None
        names = self._crop_names.get(ex.index)
        if names is None:
            self._missing(
                "missing_objects", DataError(f"sample {ex.index} ({ex.source}) has no object entry")
            )
            return []
        crops = [self._image(self.layout.crops_dir, n, "skipped_crop") for n in names[: self.max_objects]]
        return [c for c in crops if c is not None]

    def _generated_objects(self, ex: MNREExample, generated) -> list:
        assert self._boxes is not None
        boxes = self._boxes.get(ex.index)
        if boxes is None:
            self._missing("missing_objects", DataError(f"sample {ex.index} ({ex.source}) has no box entry"))
            return []
        if generated is None:
            return []
        crops = []
        for box in boxes[: self.max_objects]:
            crop = crop_box(generated, box)
            if crop is None:  # degenerate box: the released loader skips it silently; we count it
                self.report["skipped_crop"] += 1
            else:
                crops.append(crop)
        return crops

    # ---- Dataset API -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> MNREExample:
        ex = self.examples[i]
        ex_pos = i if i >= 0 else len(self.examples) + i
        fields: dict = {}
        if self._captions is not None:
            fields["caption"] = self._captions[ex_pos]
        if self._scores is not None:
            fields["scores"] = self._scores[ex_pos]
        if self._phrases is not None:
            fields["phrase"] = self._phrases[ex_pos]
        if "image" in self.modalities:
            fields["image"] = self._image(self.layout.image_dir, ex.img_id, "missing_image", "image")
        if "objects" in self.modalities:
            fields["objects"] = self._objects(ex)
        if "generated_image" in self.modalities or "generated_objects" in self.modalities:
            generated = self._image(
                self.layout.generated_image_dir,
                ex.img_id,
                "missing_generated_image",
                "generated_image" if "generated_image" in self.modalities else None,
            )
            if "generated_image" in self.modalities:
                fields["generated_image"] = generated
            if "generated_objects" in self.modalities:
                fields["generated_objects"] = self._generated_objects(ex, generated)
        return dataclasses.replace(ex, **fields)

    def __repr__(self) -> str:
        return (
            f"MNREDataset({str(self.data_dir)!r}, split={self.split!r}, samples={len(self)}, "
            f"labels={len(self.labels)}, modalities={list(self.modalities)})"
        )
