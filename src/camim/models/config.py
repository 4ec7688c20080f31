"""Typed configuration of every extractor (text-only BERT, TMR, HVPNeT; with or without CAM and MI).

``ModelConfig`` holds the sizes and switches; ``FidelityConfig`` holds one named option per quirk of the
released code (default = released behaviour, the "paper" reading; ``FidelityConfig.clean()`` gives the
cleaner reading). Both are parsed from plain mappings (a run config's ``model`` section, ``config.json``)
by the one strict loader :func:`camim.typed.from_mapping` and written back by ``to_dict``.

What a switch may ask of an extractor is the extractor's declaration (``capabilities``, read through
:func:`camim.models.registry.capabilities`): ``cam`` / ``mi`` left out (``None``) take the extractor's default
(on where it has CAM / MI, else off), and a config asking for what it lacks is refused naming the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from camim.errors import CamimError
from camim.models import registry
from camim.models.capabilities import Capabilities
from camim.models.registry import model_names
from camim.typed import from_mapping, to_plain

CAM_LEVELS = ("none", "word", "sentence", "both")
MI_PAIRS = ("O&G", "(O+G)&F", "T&F", "(O+G)&T")
VISUAL_MODES = ("images", "text-caption")

log = logging.getLogger(__name__)


@dataclass
class FidelityConfig:
    """One switch per quirk of the released code. ``True`` reproduces the released code (reference §7).

    - ``unmasked_attention``: CAM, fusion and MI-side attentions attend to padding (released); ``False``
      masks padded keys and drops padded query positions from every sum.
    - ``pad_inclusive_mean``: C_S / T_S are means over all 40 positions, pads included (released);
      ``False`` averages real tokens only.
    - ``phrase_case_sensitive``: phrase ids are a case-sensitive vocabulary lookup of whitespace words,
      no word pieces (released, ~80% [UNK]); ``False`` runs the tokenizer (lower-cased word pieces).
    - ``phrase_unmasked``: the phrase encoder sees an all-ones mask (what transformers 4.11.3 computed from
      the released all-zero mask); ``False`` masks the phrase padding.
    - ``full_image_bgr_unnormalised``: full images are cv2-like BGR, 0-255 floats, stretched to the image
      size, not normalised (released TMR/CAMIM); ``False`` uses the crop pipeline (RGB, Resize, CenterCrop,
      ImageNet normalisation) for full images too. Object crops always use the crop pipeline.
    - ``sum_pooling``: the full-image (and text-caption) CAM and fusion outputs are summed over positions
      before tanh (released, reference §1.3/§1.5); ``False`` averages over the real positions, which keeps
      tanh out of saturation when the streams are long token sequences (the offline text-caption mode).
    """

    unmasked_attention: bool = True
    pad_inclusive_mean: bool = True
    phrase_case_sensitive: bool = True
    phrase_unmasked: bool = True
    full_image_bgr_unnormalised: bool = True
    sum_pooling: bool = True

    @classmethod
    def clean(cls) -> FidelityConfig:
        """The paper's cleaner reading: masks everywhere, real-token means, tokenised phrases, normalised RGB."""
        return cls(False, False, False, False, False, False)


@dataclass
class ModelConfig:
    """Every size and switch of one extractor. ``name`` picks the extractor; ``cam`` / ``mi`` apply where its
    ``capabilities`` say so (None: the extractor's default, resolved when the config is made)."""

    name: str = "tmr"
    cam: str | None = None  # none | word | sentence | both  (Fig. 4b); None: both with CAM, else none
    mi: bool | None = None  # None: true with MI, else false
    mi_alpha: float = 0.1  # Eq. (23)
    mi_pair: str = "O&G"  # O&G | (O+G)&F | T&F | (O+G)&T  (Fig. 4a)
    mi_temperature: float = 1.0  # released: 1
    mi_symmetric: bool = False  # released: one direction, anchored on the second member (G)
    text_encoder: str | None = "bert-base-uncased"  # null: set when the run starts (offline.model_keys)
    text_encoder_pretrained: bool = True
    caption_encoder: str | None = None  # bert2; None = same source as text_encoder (separate weights)
    vision_encoder: str = "microsoft/resnet-50"
    vision_encoder_pretrained: bool = True
    visual_mode: str = "images"  # images | text-caption (offline: text + captions, no images; docs/models.md)
    max_length: int = 128
    caption_max_length: int = 40
    text_window: int = 40  # T_S / T_W come from the first `text_window` marked tokens (released bert2 input)
    phrase_max_length: int = 6
    # released: every batch padded to the max lengths above. True: text, captions and phrases are padded to
    # the batch's longest row (same results with masked attention and pad-free means, less compute)
    pad_to_longest: bool = False
    max_objects: int = 3  # m object crops per image; the data layer loads this many (one owner)
    image_size: int = 224
    dropout: float = 0.5  # before linear_final and before fc (released)
    cam_dropout: float = 0.3  # CAM projections and merge layer (released)
    hvpnet_prompt_len: int = 4
    hvpnet_prefix_hidden: int = 800
    missing_scores: str = "error"  # error | uniform (strong = weak = 0.5, counted)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)

    def __post_init__(self) -> None:
        # Choices are checked here, not by Literal types, so that ``dataclasses.replace`` and direct
        # construction are checked too; every message names the run config's dotted key.
        if isinstance(self.fidelity, dict):
            self.fidelity = from_mapping(FidelityConfig, self.fidelity, "model.fidelity")
        if self.name not in model_names():
            raise CamimError(f"model.name: model name must be one of {model_names()}, got {self.name!r}")
        caps = registry.capabilities(self.name)
        if self.cam is None:
            self.cam = "both" if caps.cam else "none"
        if self.mi is None:
            self.mi = caps.mi
        if self.cam not in CAM_LEVELS:
            raise CamimError(f"model.cam must be one of {CAM_LEVELS}, got {self.cam!r}")
        if self.mi_pair not in MI_PAIRS:
            raise CamimError(f"model.mi_pair must be one of {MI_PAIRS}, got {self.mi_pair!r}")
        if self.visual_mode not in VISUAL_MODES:
            raise CamimError(f"model.visual_mode must be one of {VISUAL_MODES}, got {self.visual_mode!r}")
        if self.missing_scores not in ("error", "uniform"):
            raise CamimError(
                f"model.missing_scores must be 'error' or 'uniform', got {self.missing_scores!r}"
            )
        if self.mi_temperature <= 0:
            raise CamimError(f"model.mi_temperature must be > 0, got {self.mi_temperature}")
        for key in ("max_length", "caption_max_length", "text_window", "phrase_max_length", "image_size"):
            if getattr(self, key) < 1:
                raise CamimError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_objects < 0:
            raise CamimError(f"model.max_objects must be >= 0, got {self.max_objects}")
        if self.text_window > self.max_length:
            raise CamimError(
                f"model.text_window ({self.text_window}) exceeds model.max_length ({self.max_length})"
            )
        if self.pad_to_longest:
            f = self.fidelity
            quirks = [
                n for n in ("unmasked_attention", "pad_inclusive_mean", "phrase_unmasked") if getattr(f, n)
            ]
            if quirks:
                raise CamimError(
                    f"model.pad_to_longest needs masked attention and pad-free means, but fidelity {', '.join(quirks)} "
                    "is on (with it the number of pads changes the result); set it false or keep "
                    "pad_to_longest false"
                )
        self._check_capabilities(caps)

    def _check_capabilities(self, caps: Capabilities) -> None:
        """Refuse, naming the key, a switch that asks the extractor for what it does not declare."""
        name = self.name
        if self.cam != "none" and not caps.cam:
            raise CamimError(
                f"model.cam: {name} has no Caption-Aware Module (it reads {_reads(caps)}); set model.cam: none, "
                f"got {self.cam!r}"
            )
        if self.mi and not caps.mi:
            raise CamimError(
                f"model.mi: {name} has no mutual-information loss (it reads {_reads(caps)}); set model.mi: false"
            )
        if caps.visual_modes and self.visual_mode not in caps.visual_modes:
            raise CamimError(
                f"model.visual_mode: {name} runs in {' | '.join(caps.visual_modes)} only, got {self.visual_mode!r}"
            )
        if self.mi and caps.mi_pairs is not None and self.mi_pair not in caps.mi_pairs:
            raise CamimError(
                f"model.mi_pair: {name} supports {' | '.join(caps.mi_pairs)} with MI, got {self.mi_pair!r}"
            )

    @property
    def capabilities(self) -> Capabilities:
        """What the extractor ``name`` reads and supports (its class's declaration)."""
        return registry.capabilities(self.name)

    # The two below are read inside forward (compiled: no registry look-up there). A switch the extractor does
    # not declare was refused when the config was made, so the switch alone decides.
    @property
    def uses_cam(self) -> bool:
        return self.cam != "none"

    @property
    def uses_mi(self) -> bool:
        return bool(self.mi)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | ModelConfig) -> ModelConfig:
        """Build from a mapping (a saved model's ``config.json``, whose ``labels`` and ``format`` entries are
        not config keys, or a dict in Python): every value parsed by its declared type, unknown keys refused."""
        if isinstance(data, ModelConfig):
            return data
        if not isinstance(data, dict):
            raise CamimError(f"a model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"labels", "format"})
        if unknown:  # this wording for a dict or config.json; the run config says "model.<key>: unknown key"
            raise CamimError(f"unknown model config keys: {unknown}; known: {sorted(known)}")
        return from_mapping(cls, {k: v for k, v in data.items() if k in known}, "model")


def _reads(caps: Capabilities) -> str:
    return "text only" if caps.text_only else "text, " + ", ".join(sorted(caps.reads))


def unsupported_switches_off(model: dict, where: str) -> dict:
    """``model`` (a saved ``config.json`` or a run folder's ``model`` section) with ``cam`` / ``mi`` read as
    off where its extractor has no CAM / MI.

    Before extractors declared what they support, the defaults ``cam: both`` and ``mi: true`` were written
    into the config of every text-only model built without those keys, where they had no effect (no module,
    no loss, the same weights). Such a file still loads; each value read as off is logged as a warning that
    names ``where`` and the key. A config given now (a preset, ``--set``, a dict) is refused instead."""
    name = model.get("name")
    if name not in model_names():
        return model  # ModelConfig refuses the name
    caps, out = registry.capabilities(name), dict(model)
    asked = {
        "cam": out.get("cam") in CAM_LEVELS[1:] and not caps.cam,
        "mi": out.get("mi") is True and not caps.mi,
    }
    for key, off in (("cam", "none"), ("mi", False)):
        if asked[key]:
            log.warning(
                "%s: model.%s %r read as %r: %s does not support it (a config written before extractors "
                "declared their capabilities)",
                where,
                key,
                out[key],
                off,
                name,
            )
            out[key] = off
    return out
