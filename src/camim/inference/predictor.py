"""Running a trained extractor on new posts: :class:`Predictor`.

>>> predictor = Predictor.from_pretrained("runs/camim")            # a training output folder, or DIR/model, or a hub id
>>> p = predictor.predict("Rafael Nadal gets engaged to Mery Perello", head="Rafael Nadal", tail="Mery Perello",
...                       image="post.jpg", caption="A man and a woman smiling.")
>>> p.relation, p.probability, p.distribution[:3]
>>> predictor.infer({"token": [...], "h": {"pos": [0, 2]}, "t": {"pos": [5, 7]}})   # OpenNRE's call -> (relation, score)

Modalities the model needs but the caller did not give (``model.required_modalities``) are filled by the
pluggable helpers when configured -- ``captioner(image) -> str`` (e.g. ``camim.captioning``),
``object_finder(image[, queries]) -> list[image]`` (object crops; queried with the head and tail mentions when
it takes a second argument, as ``camim.preprocess.ObjectDetector`` does), ``image_generator(text) -> image``
(TMR's translation image), ``score_estimator(image, text, generated_image) -> Scores`` (TMR correlation scores,
e.g. ``functools.partial(camim.preprocess.estimate_scores, estimator=...)``) -- and otherwise left ``None``, so the model runs in its documented mode without them. Each result says
which modalities were absent and what was done instead.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from camim.data.types import Entity, MNREExample, Scores
from camim.errors import CamimError, Cancelled
from camim.inference.batching import BatchEngine
from camim.inference.text import SpanError, resolve_entity, tokenize
from camim.io import MAX_IMAGE_PIXELS, Fit, ImageLimits, image_cost, open_image, verify_image

Captioner = Callable[[Image.Image], str]
ObjectFinder = Callable[..., list[Image.Image]]  # (image) or (image, queries)
ScoreEstimator = Callable[[Image.Image | None, str, Image.Image | None], Scores]
ImageGenerator = Callable[[str], Image.Image]

ImageLike = Image.Image | bytes | str | Path
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # encoded size of an image handed in (a file, or posted)
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024  # what decoding one image may take (camim.io.decode_cost)
IMAGE_KEYS = ("image", "generated_image", "objects")  # the images an input item may carry


@dataclass
class Prediction:
    """One predicted relation with the full distribution and an account of the inputs used."""

    relation: str
    probability: float
    distribution: list[tuple[str, float]]  # every label with its probability, most probable first
    tokens: list[str]
    head: Entity
    tail: Entity
    caption: str | None  # the caption the model saw (given or generated), None in no-caption mode
    caption_source: str  # "given" | "generated" | "none"
    absent_modalities: list[str] = field(default_factory=list)  # needed by the model, not available
    notes: list[str] = field(default_factory=list)  # what was generated, what the model did instead

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (written out field by field: ``dataclasses.asdict`` deep-copies, per served request)."""
        return {
            "relation": self.relation,
            "probability": self.probability,
            "distribution": [{"relation": r, "probability": p} for r, p in self.distribution],
            "tokens": list(self.tokens),
            "head": {"name": self.head.name, "pos": [self.head.start, self.head.end]},
            "tail": {"name": self.tail.name, "pos": [self.tail.start, self.tail.end]},
            "caption": self.caption,
            "caption_source": self.caption_source,
            "absent_modalities": list(self.absent_modalities),
            "notes": list(self.notes),
        }


@dataclass
class PreparedInput:
    """A validated input with its modalities completed (see :meth:`Predictor.prepare`)."""

    example: MNREExample
    caption_source: str
    absent: list[str]
    notes: list[str]


@dataclass
class _Media:
    """The modalities of one post while :meth:`Predictor.prepare` completes them."""

    image: Image.Image | None
    generated_image: Image.Image | None
    objects: list[Image.Image] | None
    caption: str | None
    caption_source: str  # "given" | "generated" | "none"
    generated_objects: list[Image.Image] | None = None
    scores: Scores | None = None
    notes: list[str] = field(default_factory=list)


# What camim.models' processor does for a modality the example lacks (camim/models/processing.py).
_MISSING_FALLBACK = {
    "caption": "no-caption mode: the caption is encoded as the empty caption ([CLS] [SEP])",
    "objects": "the object slots are zero images, masked out (objects_mask = 0)",
    "generated_objects": "the generated-object slots are zero images, masked out",
    "phrase": "the grounding phrase is made of the head and tail names",
    "scores": "uniform correlation scores are used (strong = weak = 0.5)",
}


def resolve_model_dir(path: str | Path) -> Path | None:
    """The folder holding ``config.json``: ``path`` itself or a training output's ``path/model``; None if neither."""
    p = Path(path)
    for candidate in (p, p / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


class Predictor:
    """Thread-safe inference around a loaded extractor (``camim.models`` Contract 2).

    ``captioner`` / ``object_finder`` / ``image_generator`` fill modalities the caller leaves out (see the
    module docstring); images over ``max_image_bytes`` (encoded), ``max_image_pixels`` or
    ``max_decoded_bytes`` (what decoding one takes) are refused. Only the images the model or a helper uses
    are decoded, each reduced while decoding to the size its users need (:meth:`image_fits`); the others
    are checked (header and encoded data) without decoding a pixel.
    ``missing_scores="uniform"`` (default) lets a model that reads TMR correlation scores answer posts that
    have none with strong = weak = 0.5 (noted in each result), through a copy of the model's processor: the
    loaded model itself is left as loaded. ``None`` keeps the model's own setting.

    :meth:`predict` calls from several threads are coalesced into one forward of up to ``max_batch_size``
    posts by :attr:`engine` (a :class:`~camim.inference.batching.BatchEngine`, waiting at most
    ``max_wait_ms`` for posts other threads are still preparing); each call still gets exactly its own
    result. ``max_batch_size=1`` runs one post per forward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        captioner: Captioner | None = None,
        object_finder: ObjectFinder | None = None,
        image_generator: ImageGenerator | None = None,
        score_estimator: ScoreEstimator | None = None,
        device: str | torch.device = "cpu",
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        missing_scores: str | None = "uniform",
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        bf16: bool = False,
    ):
        self.device = torch.device(device)
        # torch.autocast(bfloat16) around the forward (CPU or GPU): ~2x on a CPU with avx512_bf16; the
        # probabilities differ from fp32 in the 2nd-3rd digit (docs/speed.md, "bf16 on CPU")
        self.bf16 = bf16
        self.model = model.to(self.device).eval()
        self.labels: list[str] = _label_names(model)
        self.captioner = captioner
        self.object_finder = object_finder
        self.image_generator = image_generator
        self.score_estimator = score_estimator
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.max_decoded_bytes = max_decoded_bytes
        self.required_modalities: set[str] = set(getattr(model, "required_modalities", set()) or set())
        config = getattr(model, "config", None)
        # The processor this predictor batches with: the model's own, or a copy whose config answers posts
        # without TMR correlation scores with uniform ones (noted per result) instead of refusing every
        # request. The loaded model and its processor are left as they were (missing_scores=None keeps the
        # model's own setting).
        self.processor = getattr(model, "processor", None)
        self.missing_scores: str | None = getattr(config, "missing_scores", None)
        if (
            missing_scores is not None
            and "scores" in self.required_modalities
            and config is not None
            and missing_scores != self.missing_scores
        ):
            self.processor = copy.copy(model.processor)
            self.processor.config = dataclasses.replace(config, missing_scores=missing_scores)
            self.processor.report = Counter()
            self.missing_scores = missing_scores
        self.caption_failures = 0  # captioner errors, each answered in no-caption mode (and noted)
        self._count_lock = threading.Lock()
        self._lock = threading.Lock()  # one forward at a time: processors and models are not thread-safe
        self.engine: BatchEngine[PreparedInput, Prediction] = BatchEngine(
            self.run_prepared, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> Predictor:
        """Load from a local folder (``DIR`` of ``camim train --output DIR``, or ``DIR/model``) or a hub id."""
        model_dir = resolve_model_dir(name_or_path)
        if model_dir is None:
            if Path(name_or_path).exists():
                raise CamimError(
                    f"{name_or_path}: no config.json here or in {Path(name_or_path) / 'model'}; "
                    "expected a folder written by model.save_pretrained or `camim train --output`"
                )
            model_dir = _download(str(name_or_path), revision)
        from camim.models import load_model

        return cls(load_model(model_dir), device=device, **kwargs)

    # ------------------------------------------------------------------ public API
    def predict(
        self,
        text_or_tokens: str | Sequence[str],
        head: object,
        tail: object,
        image: ImageLike | None = None,
        caption: str | None = None,
        objects: Sequence[ImageLike] | None = None,
        generated_image: ImageLike | None = None,
    ) -> Prediction:
        """Predict the relation between ``head`` and ``tail`` in one post.

        ``text_or_tokens`` is the raw post (tokenised MNRE-style) or its token list. ``head``/``tail`` are token
        spans ``(start, end)`` (end exclusive), mention strings that occur exactly once, or dicts
        ``{"pos": ...}`` / ``{"char": ...}`` / ``{"name": ...}``. Images are PIL images, encoded bytes or paths.
        """
        item = dict(
            head=head,
            tail=tail,
            image=image,
            caption=caption,
            objects=objects,
            generated_image=generated_image,
        )
        item["text" if isinstance(text_or_tokens, str) else "token"] = text_or_tokens
        with self.engine.expect():  # threads preparing posts at the same time share one forward
            future = self.engine.submit(self.prepare(item))
        return future.result()

    def predict_batch(self, items: Sequence[dict[str, Any]], batch_size: int = 32) -> list[Prediction]:
        """Predict many posts; each item has the keywords of :meth:`predict` (``text`` or ``token``, ``head``,
        ``tail``, and optionally ``image``, ``caption``, ``objects``, ``generated_image``)."""
        return self.predict_prepared(
            [self.prepare(item, index=i) for i, item in enumerate(items)], batch_size
        )

    def predict_prepared(self, prepared: Sequence[PreparedInput], batch_size: int = 32) -> list[Prediction]:
        """Run the model on inputs already validated by :meth:`prepare`."""
        results: list[Prediction] = []
        for s in range(0, len(prepared), batch_size):
            chunk = prepared[s : s + batch_size]
            probs = self._forward([p.example for p in chunk])
            results.extend(self._result(p, row) for p, row in zip(chunk, probs))
        return results

    def run_prepared(self, prepared: Sequence[PreparedInput]) -> list[Prediction | CamimError]:
        """One forward for all of ``prepared``; when the model refuses the batch, each input alone, so that a
        refused input gets its own :class:`CamimError` in its slot and the others their predictions."""
        try:
            return list(self.predict_prepared(prepared, batch_size=max(1, len(prepared))))
        except CamimError as exc:
            if len(prepared) == 1:
                return [exc]
        out: list[Prediction | CamimError] = []
        for p in prepared:
            try:
                out.append(self.predict_prepared([p])[0])
            except CamimError as exc:
                out.append(exc)
        return out

    def infer(self, item: dict[str, Any]) -> tuple[str, float]:
        """OpenNRE's call: ``{'text' or 'token', 'h': {'pos'}, 't': {'pos'}, 'image'?, 'caption'?}`` ->
        ``(relation, score)``. As in OpenNRE, ``pos`` counts characters with ``text`` and tokens with ``token``."""
        if "text" in item and "token" not in item:
            item = dict(item)
            item["h"] = _char_spec(item.get("h"), "h")
            item["t"] = _char_spec(item.get("t"), "t")
        p = self.predict_batch([_from_opennre(item)])[0]
        return p.relation, p.probability

    # ------------------------------------------------------------------ steps
    def prepare(
        self, item: dict[str, Any], index: int = 0, stop: threading.Event | None = None
    ) -> PreparedInput:
        """Validate one input item and complete its modalities; raises :class:`CamimError` on bad input, and
        :class:`~camim.errors.Cancelled` between steps (and from a captioner that takes ``stop``) once
        ``stop`` is set.

        The steps, in order: the post and its two entities (:meth:`_post`), the media the caller gave
        (:meth:`_given`), the caption (:meth:`_complete_caption`), the images and object crops
        (:meth:`_complete_visuals`), the images the model cannot do without (:meth:`_check_required`), the
        correlation scores (:meth:`_complete_scores`), then a note for every modality still absent."""
        tokens, head, tail = self._post(item)
        _check_stop(stop)
        media = self._given(item, stop)
        self._complete_caption(media, stop)
        _check_stop(stop)
        self._complete_visuals(media, tokens, head, tail)
        self._check_required(media)
        _check_stop(stop)
        self._complete_scores(media, tokens)
        example = MNREExample(
            index=index,
            tokens=tokens,
            head=head,
            tail=tail,
            img_id=str(item.get("img_id") or "input"),
            caption=media.caption,
            scores=media.scores,
            image=media.image,
            objects=media.objects,
            generated_image=media.generated_image,
            generated_objects=media.generated_objects,
            source=item.get("source"),
        )
        absent = self._note_absent(example, media.notes)
        return PreparedInput(example, media.caption_source, absent, media.notes)

    def _post(self, item: dict[str, Any]) -> tuple[list[str], Entity, Entity]:
        """The post's tokens and its head and tail entities (marks checked, never overlapping)."""
        if "token" in item and item["token"] is not None:
            tokens = item["token"]
            if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) and t for t in tokens):
                raise CamimError("'token' must be a list of non-empty strings")
            tokens, char_tokens = list(tokens), None
        elif isinstance(item.get("text"), str):
            char_tokens = tokenize(item["text"])
            tokens = [t.text for t in char_tokens]
        else:
            raise CamimError("give the post as 'text' (a string) or 'token' (a list of strings)")
        if not tokens:
            raise CamimError("the post is empty")
        head = resolve_entity(tokens, item.get("head", item.get("h")), "head", char_tokens)
        tail = resolve_entity(tokens, item.get("tail", item.get("t")), "tail", char_tokens)
        if head.start < tail.end and tail.start < head.end:
            raise SpanError(
                f"head [{head.start}, {head.end}) and tail [{tail.start}, {tail.end}) overlap; mark two different entities"
            )
        return tokens, head, tail

    def _given(self, item: dict[str, Any], stop: threading.Event | None = None) -> _Media:
        """The images (those used decoded within the limits, the others only checked) and caption the caller
        gave."""
        fits, unused, decoded = self.image_fits(item), [], {}
        for key, name, source in _image_sources(item):
            _check_stop(stop)
            if key in fits:
                decoded.setdefault(key, []).append(self._image(source, name, fits[key]))
            else:
                verify_image(source, self._limits(), name)
                unused.append(key)
        image, generated_image = (decoded.get(key, [None])[0] for key in ("image", "generated_image"))
        objects = (
            decoded.get("objects", []) if "objects" in fits and item.get("objects") is not None else None
        )
        caption = item.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise CamimError("'caption' must be a string")
        caption = caption.strip() if caption else None
        media = _Media(
            image=image,
            generated_image=generated_image,
            objects=objects,
            caption=caption,
            caption_source="given" if caption else "none",
        )
        if caption and "caption" not in self.required_modalities:
            media.notes.append("caption given, but this model does not read captions")
        for key in dict.fromkeys(unused):
            media.notes.append(f"{key} given, but neither this model nor its helpers use it: not decoded")
        return media

    def image_fits(self, item: dict[str, Any]) -> dict[str, Fit | None]:
        """The images of ``item`` (``image``, ``generated_image``, ``objects``) that :meth:`prepare` decodes,
        each with the smallest size its users need (:class:`camim.io.Fit`; ``None``: full resolution). The
        model needs the crop pipeline's short side (``image_size`` * 256/224); a helper its ``max_image_side``
        (the long side it downscales to itself), or the full image when it has none."""
        need, model = self.required_modalities, self._vision_fit()
        caption = item.get("caption")
        wants_caption = "caption" in need and self.captioner is not None
        wants_caption = wants_caption and not (isinstance(caption, str) and caption.strip())
        stands_in = "generated_image" in need and item.get("generated_image") is None
        stands_in = stands_in and self.image_generator is None  # the original image is used in its place
        finds = self.object_finder is not None
        finder, estimator = _helper_fit(self.object_finder), _helper_fit(self.score_estimator)
        scored = "scores" in need and self.score_estimator is not None
        users: dict[str, list[Fit | None]] = {key: [] for key in IMAGE_KEYS}
        for key, fit, used in (
            ("image", model, "image" in need or stands_in),
            ("image", _helper_fit(self.captioner), wants_caption),
            ("image", finder, finds and "objects" in need and item.get("objects") is None),
            ("image", finder, finds and stands_in and "generated_objects" in need),
            ("image", estimator, scored),
            ("generated_image", model, "generated_image" in need),
            ("generated_image", estimator, scored),
            ("generated_image", finder, finds and "generated_objects" in need),
            ("objects", model, "objects" in need),
        ):
            if used:
                users[key].append(fit)
        return {key: functools.reduce(_union, fits) for key, fits in users.items() if fits}

    def decode_cost(self, item: dict[str, Any]) -> tuple[int, int]:
        """``(largest, kept)``: the most bytes decoding one of ``item``'s images takes (they are decoded one
        at a time) and the bytes of the reduced RGB images :meth:`prepare` keeps, read from their headers
        (nothing decoded); :class:`~camim.errors.ImageError` as :meth:`prepare` would raise for a bad image."""
        fits, limits = self.image_fits(item), self._limits()
        costs = [
            image_cost(source, limits, name, fits[key])
            for key, name, source in _image_sources(item)
            if key in fits
        ]
        return max((c[0] for c in costs), default=0), sum(c[1] for c in costs)

    def _vision_fit(self) -> Fit | None:
        """What the processor's crop pipeline needs: a short side of ``image_size`` * 256/224."""
        size = getattr(getattr(self.model, "config", None), "image_size", None)
        return Fit(short=round(size * 256 / 224)) if isinstance(size, int) and size > 0 else None

    def _complete_caption(self, media: _Media, stop: threading.Event | None = None) -> None:
        """Caption the image when the model reads captions and none was given (a failure is counted and
        noted: the post is answered in no-caption mode)."""
        if media.caption is not None or "caption" not in self.required_modalities or self.captioner is None:
            return
        if media.image is None:
            media.notes.append("caption: a captioner is configured but there is no image to caption")
            return
        try:
            media.caption = str(_call_with_stop(self.captioner, media.image, stop)).strip() or None
            _check_stop(stop)
        except Cancelled:
            raise
        except Exception as exc:  # a captioning server being down must not fail the prediction
            with self._count_lock:
                self.caption_failures += 1
            media.notes.append(f"captioning failed ({type(exc).__name__}: {exc})")
        if media.caption:
            media.caption_source = "generated"
            media.notes.append(f"caption generated by {_name(self.captioner)}")

    def _complete_visuals(self, media: _Media, tokens: list[str], head: Entity, tail: Entity) -> None:
        """The translation image, the object crops and the generated image's crops the model reads, from the
        configured helpers (or the original image standing in for the translation image)."""
        need = self.required_modalities
        if media.generated_image is None and "generated_image" in need and self.image_generator is not None:
            media.generated_image = self._image(self.image_generator(" ".join(tokens)), "generated_image")
            media.notes.append(f"generated image made by {_name(self.image_generator)}")
        if (
            media.objects is None
            and "objects" in need
            and self.object_finder is not None
            and media.image is not None
        ):
            found = self._find_objects(media.image, head, tail, tokens)
            media.objects = [self._image(o, "objects") for o in found]
            media.notes.append(f"{len(media.objects)} object crop(s) found by {_name(self.object_finder)}")
        if media.generated_image is None and "generated_image" in need and media.image is not None:
            media.generated_image = media.image
            media.notes.append(
                "generated_image: no image generator configured; the original image stands in for the "
                "translation image (the model was trained with diffusion images, so expect lower accuracy)"
            )
        if (
            "generated_objects" in need
            and self.object_finder is not None
            and media.generated_image is not None
        ):
            found = self._find_objects(media.generated_image, head, tail, tokens)
            media.generated_objects = [self._image(o, "generated_objects") for o in found]
            media.notes.append(
                f"{len(media.generated_objects)} generated-image object(s) found by {_name(self.object_finder)}"
            )

    def _check_required(self, media: _Media) -> None:
        """Refuse a post without an image the model cannot run without."""
        need = self.required_modalities
        if "image" in need and media.image is None:
            raise CamimError(f"this {self._model_name()} model needs the image: give the post's image")
        if "generated_image" in need and media.generated_image is None:
            raise CamimError(f"this {self._model_name()} model needs the generated image: give an image")

    def _complete_scores(self, media: _Media, tokens: list[str]) -> None:
        """TMR correlation scores from ``score_estimator`` (which may answer None: no estimate), else uniform
        ones when allowed."""
        need = self.required_modalities
        image_given = (media.image or media.generated_image) is not None
        if "scores" in need and self.score_estimator is not None and image_given:
            media.scores = self.score_estimator(media.image, " ".join(tokens), media.generated_image)
            if media.scores is not None:
                media.notes.append(f"correlation scores estimated by {_name(self.score_estimator)}")
        if "scores" in need and media.scores is None and (self.missing_scores or "uniform") != "uniform":
            raise CamimError(
                f"this {self._model_name()} model needs TMR correlation scores, which a single post does not have; "
                "build it with missing_scores='uniform' to run without them"
            )

    def _note_absent(self, example: MNREExample, notes: list[str]) -> list[str]:
        """The modalities the model reads that ``example`` lacks, each noted with what the model does instead."""
        absent = []
        for modality in sorted(self.required_modalities):
            if getattr(example, modality, None) is None:
                absent.append(modality)
                fallback = _MISSING_FALLBACK.get(modality, f"the model ran without {modality}")
                notes.append(f"{modality}: not given; {fallback}")
        return absent

    def _find_objects(self, image: Image.Image, head: Entity, tail: Entity, tokens: list[str]) -> list:
        """Object crops from ``object_finder``, queried with the two mentions when it takes queries."""
        try:
            params = inspect.signature(self.object_finder).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature: call with the image alone
            params = ()
        takes_queries = sum(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        ) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
        if not takes_queries:
            return list(self.object_finder(image))
        queries = [" ".join(tokens[e.start : e.end]) for e in (head, tail)]
        return list(self.object_finder(image, queries))

    def _forward(self, examples: list[MNREExample]) -> torch.Tensor:
        with self._lock, torch.inference_mode(), self._autocast():
            batch = self.processor(examples).to(self.device)
            batch.labels = None
            logits = self.model(batch).logits
        return torch.softmax(logits.float(), dim=-1).cpu()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _result(self, p: PreparedInput, probs: torch.Tensor) -> Prediction:
        order = torch.argsort(probs, descending=True).tolist()
        distribution = [(self.labels[i], float(probs[i])) for i in order]
        ex = p.example
        return Prediction(
            relation=distribution[0][0],
            probability=distribution[0][1],
            distribution=distribution,
            tokens=ex.tokens,
            head=ex.head,
            tail=ex.tail,
            caption=ex.caption,
            caption_source=p.caption_source if ex.caption else "none",
            absent_modalities=p.absent,
            notes=p.notes,
        )

    def _image(self, source: ImageLike | None, name: str, fit: Fit | None = None) -> Image.Image | None:
        if source is None:
            return None
        return open_image(source, self._limits(), name, fit)

    def _limits(self) -> ImageLimits:
        return ImageLimits(
            max_pixels=self.max_image_pixels,
            max_bytes=self.max_image_bytes,
            max_decoded_bytes=self.max_decoded_bytes,
        )

    def _model_name(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "name", None) or type(self.model).__name__)

    def info(self) -> dict[str, Any]:
        """What the server shows about the loaded model: ``cam`` is the Caption-Aware Module's level and
        ``mi`` whether it was trained with the MI loss, as its extractor's capabilities give them effect
        (``"none"`` / ``False`` for a model without, a text-only one always)."""
        config = getattr(self.model, "config", None)
        return {
            "model": type(self.model).__name__,
            "labels": list(self.labels),
            "required_modalities": sorted(self.required_modalities),
            "cam": config.cam if getattr(config, "uses_cam", False) else "none",
            "mi": bool(getattr(config, "uses_mi", False)),
            "captioner": _name(self.captioner) if self.captioner else None,
            "object_finder": _name(self.object_finder) if self.object_finder else None,
            "image_generator": _name(self.image_generator) if self.image_generator else None,
        }


def _label_names(model: torch.nn.Module) -> list[str]:
    for owner in (model, getattr(model, "config", None)):
        if owner is None:
            continue
        labels = owner.get("labels") if isinstance(owner, dict) else getattr(owner, "labels", None)
        if labels:
            return list(labels)
        id2label = owner.get("id2label") if isinstance(owner, dict) else getattr(owner, "id2label", None)
        if id2label:
            return [id2label[k] for k in sorted(id2label, key=int)]
    raise CamimError(f"{type(model).__name__}: the model's config carries no label names")


def _image_sources(item: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(key, name, source)`` of each image ``item`` carries (``objects`` is a list)."""
    out = [(key, key, item[key]) for key in ("image", "generated_image") if item.get(key) is not None]
    objects = item.get("objects")
    if objects is not None:
        if isinstance(objects, (str, bytes, Path, Image.Image)) or not isinstance(objects, Sequence):
            raise CamimError("'objects' must be a list of images")
        out += [("objects", f"objects[{k}]", o) for k, o in enumerate(objects) if o is not None]
    return out


def _helper_fit(helper: object) -> Fit | None:
    """A helper's need: its ``max_image_side`` (the long side it downscales larger images to), or None (full
    resolution) when it does not say."""
    side = getattr(helper, "max_image_side", None)
    return Fit(long=side) if isinstance(side, int) and side > 0 else None


def _union(a: Fit | None, b: Fit | None) -> Fit | None:
    return None if a is None else a.union(b)


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise Cancelled("the request was answered (deadline passed or client gone): its preparation stopped")


def _call_with_stop(helper: Callable[..., Any], image: Image.Image, stop: threading.Event | None) -> Any:
    """``helper(image, stop=stop)`` when the helper takes ``stop`` (it can then stop mid-call), else ``helper(image)``."""
    if stop is not None and _takes_stop(helper):
        return helper(image, stop=stop)
    return helper(image)


def _takes_stop(helper: Callable[..., Any]) -> bool:
    try:
        return "stop" in inspect.signature(helper).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _name(fn: object) -> str:
    return getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _char_spec(spec: object, what: str) -> object:
    if isinstance(spec, dict) and spec.get("pos") is not None:
        out = {k: v for k, v in spec.items() if k != "pos"}
        out["char"] = spec["pos"]
        return out
    return spec


def _from_opennre(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in item.items() if k not in ("h", "t")}
    out["head"], out["tail"] = item.get("h"), item.get("t")
    if out["head"] is None or out["tail"] is None:
        raise SpanError("give both 'h' and 't'")
    return out


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise CamimError(f"{repo_id}: not a local folder, and huggingface_hub is not installed") from None
    try:
        local = Path(snapshot_download(repo_id=repo_id, revision=revision))
    except Exception as exc:  # network, auth, or an invalid id: one clear line
        raise CamimError(
            f"{repo_id}: not a local folder, and downloading it from the hub failed: {exc}"
        ) from None
    model_dir = resolve_model_dir(local)
    if model_dir is None:
        raise CamimError(
            f"{repo_id}: the downloaded repository has no config.json (at its root or in model/)"
        )
    return model_dir
