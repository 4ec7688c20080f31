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

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from camim.data.types import Entity, MNREExample, Scores
from camim.errors import CamimError
from camim.inference.text import SpanError, resolve_entity, tokenize
from camim.io import MAX_IMAGE_PIXELS, ImageLimits, open_image

Captioner = Callable[[Image.Image], str]
ObjectFinder = Callable[..., list[Image.Image]]  # (image) or (image, queries)
ScoreEstimator = Callable[[Image.Image | None, str, Image.Image | None], Scores]
ImageGenerator = Callable[[str], Image.Image]

ImageLike = Image.Image | bytes | str | Path
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024  # encoded size of an image handed in (a file, or posted)


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
        d = asdict(self)
        d["distribution"] = [{"relation": r, "probability": p} for r, p in self.distribution]
        d["head"] = {"name": self.head.name, "pos": [self.head.start, self.head.end]}
        d["tail"] = {"name": self.tail.name, "pos": [self.tail.start, self.tail.end]}
        return d


@dataclass
class PreparedInput:
    """A validated input with its modalities completed (see :meth:`Predictor.prepare`)."""

    example: MNREExample
    caption_source: str
    absent: list[str]
    notes: list[str]


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
    module docstring); images over ``max_image_bytes`` (encoded) or ``max_image_pixels`` are refused.
    ``missing_scores="uniform"`` (default) lets a model that reads TMR correlation scores answer posts that
    have none with strong = weak = 0.5 (noted in each result); ``None`` keeps the model's own setting.
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
        missing_scores: str | None = "uniform",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.labels: list[str] = _label_names(model)
        self.captioner = captioner
        self.object_finder = object_finder
        self.image_generator = image_generator
        self.score_estimator = score_estimator
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.required_modalities: set[str] = set(getattr(model, "required_modalities", set()) or set())
        config = getattr(model, "config", None)
        if missing_scores is not None and "scores" in self.required_modalities and config is not None:
            # New posts have no TMR correlation scores: by default answer with uniform ones (noted per result)
            # instead of refusing every request; missing_scores=None keeps the model's own setting.
            config.missing_scores = missing_scores
        self.caption_failures = (
            0  # captioner errors, each answered in no-caption mode (and noted in the result)
        )
        self._lock = threading.Lock()  # one forward at a time: processors and models are not thread-safe

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
        return self.predict_batch([item])[0]

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
    def prepare(self, item: dict[str, Any], index: int = 0) -> PreparedInput:
        """Validate one input item and complete its modalities; raises :class:`CamimError` on bad input."""
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

        image = self._image(item.get("image"), "image")
        generated_image = self._image(item.get("generated_image"), "generated_image")
        objects = item.get("objects")
        if objects is not None:
            objects = [self._image(o, f"objects[{k}]") for k, o in enumerate(objects)]
        caption = item.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise CamimError("'caption' must be a string")
        caption = caption.strip() if caption else None

        need = self.required_modalities
        notes: list[str] = []
        absent: list[str] = []
        if caption and "caption" not in need:
            notes.append("caption given, but this model does not read captions")
        caption_source = "given" if caption else "none"
        if caption is None and "caption" in need:
            if self.captioner is not None and image is not None:
                try:
                    caption = str(self.captioner(image)).strip() or None
                except Exception as exc:  # a captioning server being down must not fail the prediction
                    self.caption_failures += 1
                    notes.append(f"captioning failed ({type(exc).__name__}: {exc})")
                if caption:
                    caption_source = "generated"
                    notes.append(f"caption generated by {_name(self.captioner)}")
            elif self.captioner is not None:
                notes.append("caption: a captioner is configured but there is no image to caption")
        if generated_image is None and "generated_image" in need and self.image_generator is not None:
            generated_image = self._image(self.image_generator(" ".join(tokens)), "generated_image")
            notes.append(f"generated image made by {_name(self.image_generator)}")
        if objects is None and "objects" in need and self.object_finder is not None and image is not None:
            objects = [self._image(o, "objects") for o in self._find_objects(image, head, tail, tokens)]
            notes.append(f"{len(objects)} object crop(s) found by {_name(self.object_finder)}")
        if generated_image is None and "generated_image" in need and image is not None:
            generated_image = image
            notes.append(
                "generated_image: no image generator configured; the original image stands in for the "
                "translation image (the model was trained with diffusion images, so expect lower accuracy)"
            )
        generated_objects = None
        if "generated_objects" in need and self.object_finder is not None and generated_image is not None:
            generated_objects = [
                self._image(o, "generated_objects")
                for o in self._find_objects(generated_image, head, tail, tokens)
            ]
            notes.append(
                f"{len(generated_objects)} generated-image object(s) found by {_name(self.object_finder)}"
            )

        if "image" in need and image is None:
            raise CamimError(f"this {self._model_name()} model needs the image: give the post's image")
        if "generated_image" in need and generated_image is None:
            raise CamimError(f"this {self._model_name()} model needs the generated image: give an image")
        scores = None
        if "scores" in need and self.score_estimator is not None and (image or generated_image) is not None:
            scores = self.score_estimator(image, " ".join(tokens), generated_image)
            notes.append(f"correlation scores estimated by {_name(self.score_estimator)}")
        if (
            "scores" in need
            and scores is None
            and getattr(getattr(self.model, "config", None), "missing_scores", "uniform") != "uniform"
        ):
            raise CamimError(
                f"this {self._model_name()} model needs TMR correlation scores, which a single post does not have; "
                "build it with missing_scores='uniform' to run without them"
            )

        example = MNREExample(
            index=index,
            tokens=tokens,
            head=head,
            tail=tail,
            img_id=str(item.get("img_id") or "input"),
            caption=caption,
            scores=scores,
            image=image,
            objects=objects,
            generated_image=generated_image,
            generated_objects=generated_objects,
            source=item.get("source"),
        )
        for modality in sorted(need):
            if getattr(example, modality, None) is None:
                absent.append(modality)
                fallback = _MISSING_FALLBACK.get(modality, f"the model ran without {modality}")
                notes.append(f"{modality}: not given; {fallback}")
        return PreparedInput(example, caption_source, absent, notes)

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
        with self._lock, torch.inference_mode():
            batch = self.model.processor(examples).to(self.device)
            batch.labels = None
            logits = self.model(batch).logits
        return torch.softmax(logits.float(), dim=-1).cpu()

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

    def _image(self, source: ImageLike | None, name: str) -> Image.Image | None:
        if source is None:
            return None
        limits = ImageLimits(max_pixels=self.max_image_pixels, max_bytes=self.max_image_bytes)
        return open_image(source, limits, name)

    def _model_name(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "name", None) or type(self.model).__name__)

    def info(self) -> dict[str, Any]:
        """What the server shows about the loaded model."""
        return {
            "model": type(self.model).__name__,
            "labels": list(self.labels),
            "required_modalities": sorted(self.required_modalities),
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
