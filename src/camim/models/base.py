"""The base class of every extractor: processor, loss (Eq. 23), ``save_pretrained`` / ``from_pretrained``.

A saved model folder holds ``config.json`` (the :class:`ModelConfig` plus ``labels``), ``model.safetensors``,
the tokenizer files, a model card ``README.md`` (``camim.models.card``) and ``encoders/<name>/config.json`` for
each Hugging Face backbone, so that :meth:`MREModel.from_pretrained` (and :func:`camim.models.load_model`)
rebuilds every module offline and loads the weights strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from camim.errors import CamimError, first_line
from camim.io import atomic_path, atomic_write_text, read_json
from camim.models.batch import MREBatch, MREOutput
from camim.models.capabilities import Capabilities
from camim.models.card import CardRun, write_model_card
from camim.models.config import ModelConfig, unsupported_switches_off
from camim.models.encoders import VisionBackbone, load_text_encoder, load_tokenizer
from camim.models.mutual_information import info_nce
from camim.models.processing import MREProcessor
from camim.models.registry import model_class

FORMAT = "camim-model/1"


class MREModel(nn.Module):
    """Common machinery; subclasses define ``_build``, ``required_modalities`` and ``encode``, and declare
    ``model_name``, ``summary`` and ``capabilities``."""

    model_name: ClassVar[str] = ""
    # the model card's line saying what the extractor is ("TMR (Zheng et al., ACL 2023)")
    summary: ClassVar[str] = ""
    # what it reads and supports; the config, the card, the cases and the predictor read this, not the name
    capabilities: ClassVar[Capabilities] = Capabilities()
    # the VisionBackbone.features kind the extractor consumes of each image ("tokens" / "pyramid"); None: none
    visual_feature_kind: ClassVar[str | None] = None

    def __init__(
        self,
        config: ModelConfig,
        labels: list[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        encoder_configs: dict[str, PretrainedConfig] | None = None,
    ):
        super().__init__()
        self.config = config
        self.labels = list(labels)
        self.num_labels = len(self.labels)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.text_encoder)
        self._encoder_configs = encoder_configs or {}
        self.processor = MREProcessor(config, self.tokenizer, self.processor_needs())
        self._build()
        self._encoder_configs = {}

    # ------------------------------------------------------------ building
    def _build(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _text_encoder(self, key: str, source: str | None = None) -> nn.Module:
        """A text encoder for ``key`` ("bert" / "bert2"); vocabulary resized to the tokenizer (markers)."""
        if key in self._encoder_configs:
            return load_text_encoder(self._encoder_configs[key])
        enc = load_text_encoder(source or self.config.text_encoder, self.config.text_encoder_pretrained)
        embeddings = enc.get_input_embeddings()
        if embeddings.num_embeddings < len(self.tokenizer):
            # new marker rows (e.g. HVPNeT's <s>) are random; a meta-device build (a shape skeleton, as
            # load_reference_checkpoint makes) has no values to take their mean from
            enc.resize_token_embeddings(len(self.tokenizer), mean_resizing=not embeddings.weight.is_meta)
        return enc

    def _vision_encoder(self, key: str = "vision") -> VisionBackbone:
        if key in self._encoder_configs:
            return VisionBackbone(self._encoder_configs[key])
        return VisionBackbone(self.config.vision_encoder, self.config.vision_encoder_pretrained)

    def _visual_features(self, batch: MREBatch, modality: str, slot: int | None = None) -> list[torch.Tensor]:
        """``self.resnet``'s features (:attr:`visual_feature_kind`) of one image modality of ``batch``.

        From the backbone's attached feature table when the batch carries ``<modality>_rows`` (frozen-visual
        mode), else the backbone run on the pixels. Leading dimensions are kept: an image field gives
        (B, ...), an object field (B, m, ...); ``slot`` takes one object slot, (B, ...)."""
        rows = getattr(batch, f"{modality}_rows")
        if rows is not None:
            return self.resnet.lookup(rows if slot is None else rows[:, slot], self.visual_feature_kind)
        pixels = getattr(batch, modality)
        if pixels is None:
            raise CamimError(
                f"this {self.model_name} model needs batch.{modality} (or {modality}_rows); it is None"
            )
        if slot is not None:
            pixels = pixels[:, slot]
        lead = pixels.shape[:-3]
        feats = self.resnet.features(pixels.reshape(-1, *pixels.shape[-3:]), self.visual_feature_kind)
        return [f.reshape(*lead, *f.shape[1:]) for f in feats]

    def hf_encoders(self) -> dict[str, nn.Module]:
        """The Hugging Face backbones by key, whose configs ``save_pretrained`` stores."""
        out = {}
        for key, module in self.named_children():
            if isinstance(module, VisionBackbone):
                if module.config is not None:
                    out[key] = module.model
            elif hasattr(module, "config") and isinstance(module.config, PretrainedConfig):
                out[key] = module
        return out

    # --------------------------------------------------------------- API
    @property
    def required_modalities(self) -> set[str]:
        """The dataset modalities this model needs (names of ``MNREDataset(modalities=...)``)."""
        raise NotImplementedError

    def processor_needs(self) -> set[str]:
        """What the processor encodes: the required modalities plus those with a counted fallback."""
        return set(self.required_modalities)

    def output_layer(self) -> nn.Linear:
        """The classifier Linear that gives the logits (``classifier.fc``; HVPNeT: ``classifier``)."""
        return self.classifier.fc

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, batch: MREBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None]:
        """-> (logits, named features, mi_loss or None)."""
        raise NotImplementedError

    def forward(self, batch: MREBatch) -> MREOutput:
        """Logits (B, C); with labels, ``loss = ce_loss + mi_alpha * mi_loss`` (Eq. 23)."""
        logits, features, mi_loss = self.encode(batch)
        out = MREOutput(logits=logits, mi_loss=mi_loss, features=features)
        if batch.labels is not None:
            out.ce_loss = F.cross_entropy(logits, batch.labels)  # Eq. (19)
            weighted_mi = None if mi_loss is None else self.config.mi_alpha * mi_loss
            out.loss = out.ce_loss if weighted_mi is None else out.ce_loss + weighted_mi  # Eq. (23)
        return out

    def mutual_information(self, pair: dict[str, torch.Tensor]) -> torch.Tensor:
        """InfoNCE (Eq. 20-22) on the configured pair; ``pair`` maps "O", "G", "F", "T" to (B, d) features."""
        first, second = {
            "O&G": ("O", "G"),
            "(O+G)&F": ("O+G", "F"),
            "T&F": ("T", "F"),
            "(O+G)&T": ("O+G", "T"),
        }[self.config.mi_pair]
        if "O+G" in (first, second):
            pair = {**pair, "O+G": torch.cat([pair["O"], pair["G"]], dim=-1)}
        return info_nce(pair[first], pair[second], self.config.mi_temperature, self.config.mi_symmetric)

    # --------------------------------------------------------- save/load
    def save_pretrained(self, directory: str | Path, card: CardRun | None = None) -> Path:
        """Write config.json (+labels), model.safetensors, the tokenizer, encoders/<key>/config.json and the
        model card README.md (``card``: the run's config, metrics and paper row; see camim.models.card)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, **self.config.to_dict(), "labels": self.labels}
        atomic_write_text(directory / "config.json", json.dumps(data, indent=2) + "\n")
        for key, module in self.hf_encoders().items():
            module.config.save_pretrained(directory / "encoders" / key)
        self.tokenizer.save_pretrained(directory)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_model(self, str(tmp))
        write_model_card(directory, self.config.to_dict(), self.labels, self.required_modalities, card)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MREModel:
        """Load a model saved by :meth:`save_pretrained`: same modules, same weights, same logits, offline.

        ``MREModel.from_pretrained`` builds the extractor named in ``config.json``; on an extractor class
        (``TMR.from_pretrained``) a folder holding another extractor is refused, a subclass registered under
        another name included (its folder computes that extractor, not this one). Weights load strictly. A
        text-only model's ``config.json`` written with ``cam`` / ``mi`` on before extractors declared their
        capabilities loads with them off (``unsupported_switches_off``: logged, same weights).
        """
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise CamimError(f"{cfg_path}: not found (not a camim model folder)")
        data = read_json(cfg_path)
        if not isinstance(data, dict) or "labels" not in data:
            raise CamimError(f"{cfg_path}: no 'labels' entry")
        cfg = ModelConfig.from_dict(unsupported_switches_off(data, str(cfg_path)))
        model_cls = model_class(cfg.name)
        if cls is not MREModel and model_cls is not cls:
            raise CamimError(f"{cfg_path}: holds a {model_cls.__name__} model, not a {cls.__name__}")
        enc_dir = directory / "encoders"
        encoder_configs = {}
        if enc_dir.is_dir():
            for sub in sorted(enc_dir.iterdir()):
                try:
                    encoder_configs[sub.name] = AutoConfig.from_pretrained(sub)
                except Exception as exc:  # noqa: BLE001 - a corrupt or foreign config.json: one line naming it
                    raise CamimError(
                        f"{sub / 'config.json'}: cannot read the encoder config: {first_line(exc)}"
                    ) from exc
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise CamimError(f"{weights}: not found")
        try:
            tokenizer = load_tokenizer(str(directory))
        except CamimError as exc:
            raise CamimError(
                f"{_bad_tokenizer_file(directory)}: cannot load the tokenizer: "
                f"{first_line(exc.__cause__ or exc)}"
            ) from exc
        model = model_cls(cfg, data["labels"], tokenizer=tokenizer, encoder_configs=encoder_configs)
        try:
            load_safetensors(model, str(weights), strict=True)
        except RuntimeError as exc:
            raise CamimError(f"{weights}: weights do not match the model: {first_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - SafetensorError (truncated/corrupt file), OSError ...
            raise CamimError(f"{weights}: not a readable safetensors file ({first_line(exc)})") from exc
        model.eval()
        return model


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _bad_tokenizer_file(directory: Path) -> Path:
    """The first tokenizer file of ``directory`` that is not valid UTF-8 / JSON, else the folder itself."""
    for name in _TOKENIZER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return path
    return directory
