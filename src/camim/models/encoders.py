"""Backbones: a Hugging Face text encoder and a vision backbone that gives a spatial feature map.

Both load through ``from_pretrained`` (hub id or local folder). With ``pretrained=False`` the model is
built from the folder's/hub config with random weights (offline presets and tests). ``save_pretrained``
of an extractor stores the encoder configs so ``load_model`` rebuilds them without any download.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from camim.errors import CamimError, DataError
from camim.models.bundled import resolve_encoder

# What an extractor consumes of an image (VisionBackbone.features): TMR the last map's patch tokens,
# HVPNeT the four stage maps pooled to 2x2.
FEATURE_KINDS = ("tokens", "pyramid")


def _wrap(kind: str, source: str, exc: Exception) -> CamimError:
    return CamimError(f"cannot load the {kind} {source!r}: {type(exc).__name__}: {exc}")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source)`` (hub id, a folder with vocab.txt / tokenizer.json, or a bundled
    encoder's name: :mod:`camim.models.bundled`)."""
    path = resolve_encoder(source)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - many loader errors; re-raised as one user error
        raise _wrap("tokenizer", source, exc) from exc


def load_text_encoder(source: str | PretrainedConfig, pretrained: bool = True) -> nn.Module:
    """A text encoder (e.g. ``BertModel``) without its pooler; random weights from its config if not pretrained.

    ``source``: a hub id, a folder, a bundled encoder's name (:mod:`camim.models.bundled`) or a config."""
    name = str(getattr(source, "name_or_path", source))
    try:
        if isinstance(source, PretrainedConfig):
            return AutoModel.from_config(source, add_pooling_layer=False)
        source = resolve_encoder(source)
        if pretrained:
            # from_pretrained returns the model in eval mode; every camim model is built in train mode like
            # any nn.Module (Lightning keeps the modes it finds, so eval here meant no dropout in fine-tuning)
            return _encoder_from_pretrained(source).train()
        return AutoModel.from_config(AutoConfig.from_pretrained(source), add_pooling_layer=False)
    except CamimError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _wrap("text encoder", name, exc) from exc


#: weights of a checkpoint that a text encoder leaves out on purpose: the pooler (built without one) and the
#: pretraining heads (the masked-LM head a `camim pretrain` folder keeps, BERT's next-sentence head)
LEFT_OUT_ON_PURPOSE = ("pooler", "cls.predictions", "cls.seq_relationship", "lm_head")


class _HeldReports(logging.Filter):
    """Holds back transformers' LOAD REPORT records (and lets everything else through)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True


def _encoder_from_pretrained(source: str) -> nn.Module:
    """``AutoModel.from_pretrained`` without a pooler. transformers' LOAD REPORT is shown as usual unless all it
    reports is weights left out on purpose (:data:`LEFT_OUT_ON_PURPOSE`, e.g. the masked-LM head of every
    fine-tuning run that starts from a `camim pretrain` folder): missing or mismatched weights, or any other
    unexpected one, still show the whole report."""
    reporter = logging.getLogger("transformers.modeling_utils")
    held = _HeldReports()
    reporter.addFilter(held)
    try:
        model, info = AutoModel.from_pretrained(source, add_pooling_layer=False, output_loading_info=True)
    finally:
        reporter.removeFilter(held)
    expected = (
        not info.get("missing_keys")
        and not info.get("mismatched_keys")
        and all(
            key.startswith(LEFT_OUT_ON_PURPOSE) or f".{LEFT_OUT_ON_PURPOSE[0]}" in key
            for key in info.get("unexpected_keys", ())
        )
    )
    if not expected:
        for record in held.records:
            reporter.handle(record)
    return model


class VisionBackbone(nn.Module):
    """A CNN giving its stage maps: ``stages(pixels) -> list of (N, C_i, H_i, W_i)``, last = the 7x7 map.

    Default: transformers' ``ResNetModel`` (``microsoft/resnet-50``). ``timm/...`` names go through the optional
    timm package (``features_only``), the weights the authors used being ``timm/resnet50.a1_in1k``.

    Frozen-visual mode: :meth:`attach_features` gives the backbone a table of precomputed :meth:`features`
    (one row per cached image, e.g. a ``camim.speed.FeatureStore``) that :meth:`lookup` indexes by row id.
    The backbone is then frozen: its parameters take no gradient and its BatchNorm stays on the running
    statistics whatever ``train()`` says. The table is held as non-persistent buffers (moved by ``.to``,
    never saved), so state-dict keys, ``save_pretrained`` and checkpoints are those of the plain model.
    """

    feature_kind: str | None = None  # the kind of the attached feature table; None = no table

    def __init__(self, source: str | PretrainedConfig, pretrained: bool = True):
        super().__init__()
        self.is_timm = isinstance(source, str) and source.startswith("timm/")
        try:
            if self.is_timm:
                try:
                    import timm
                except ModuleNotFoundError as exc:
                    raise CamimError(f"{source!r} needs the optional timm package: pip install timm") from exc
                self.model = timm.create_model(
                    source[len("timm/") :], pretrained=pretrained, features_only=True
                )
                self.config = None
                self.channels = list(self.model.feature_info.channels())[-4:]
            else:
                if isinstance(source, PretrainedConfig):
                    self.model = AutoModel.from_config(source)
                elif pretrained:
                    # train mode as built from a config: BatchNorm trains (released), see load_text_encoder
                    self.model = AutoModel.from_pretrained(source).train()
                else:
                    self.model = AutoModel.from_config(AutoConfig.from_pretrained(source))
                self.config = self.model.config
                self.channels = list(self.config.hidden_sizes)
        except CamimError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _wrap("vision encoder", str(getattr(source, "name_or_path", source)), exc) from exc

    @property
    def out_channels(self) -> int:
        return self.channels[-1]

    def stages(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps (layer1..layer4) of ``pixels`` (N, 3, H, W)."""
        if self.is_timm:
            return list(self.model(pixels))[-4:]
        out = self.model(pixels, output_hidden_states=True)
        return list(out.hidden_states[1:])

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last map as patch tokens: (N, C, 7, 7) -> (N, 49, C) (the released ``forward_features`` + view)."""
        fmap = self.stages(pixels)[-1]
        return fmap.flatten(2).transpose(1, 2)

    def features(self, pixels: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """What an extractor consumes of ``pixels`` (N, 3, H, W): ``"tokens"`` (TMR) -> [patch tokens (N, hw, C)];
        ``"pyramid"`` (HVPNeT) -> the 4 stage maps average-pooled with kernel = stride = floor(H/2) to 2x2,
        4 x (N, C_i, 2, 2) (the released ``HMNeTREModel`` pooling)."""
        if kind == "tokens":
            return [self.patch_tokens(pixels)]
        if kind != "pyramid":
            raise CamimError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
        pooled = []
        for fmap in self.stages(pixels)[-4:]:
            if min(fmap.shape[-2:]) < 2:
                raise CamimError(
                    f"image_size {pixels.shape[-1]} gives a {tuple(fmap.shape[-2:])} stage map; need >= 2x2"
                )
            k = fmap.shape[-1] // 2
            pooled.append(F.avg_pool2d(fmap, kernel_size=k, stride=k)[..., :2, :2])
        return pooled

    # ----------------------------------------------------- frozen-visual mode
    def attach_features(self, kind: str, tensors: list[torch.Tensor]) -> VisionBackbone:
        """Give the backbone a feature table (row i of each tensor = :meth:`features` of image i) and freeze it.

        Replaces any table attached before; the tensors are moved to the backbone's device. Returns self."""
        if kind not in FEATURE_KINDS:
            raise CamimError(f"feature kind must be one of {FEATURE_KINDS}, got {kind!r}")
        n_out = 1 if kind == "tokens" else 4
        if len(tensors) != n_out or len({t.shape[0] for t in tensors}) != 1:
            raise CamimError(
                f"a {kind!r} feature table is {n_out} tensor(s) with the same number of rows, got "
                f"{[tuple(t.shape) for t in tensors]}"
            )
        device = next(self.model.parameters()).device
        for i, t in enumerate(tensors):
            self.register_buffer(f"features_{i}", t.to(device), persistent=False)
        self.feature_kind = kind
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> VisionBackbone:
        super().train(mode)
        if self.feature_kind is not None:
            self.model.eval()  # frozen: BatchNorm stays on its running statistics
        return self

    def lookup(self, rows: torch.Tensor, kind: str) -> list[torch.Tensor]:
        """The attached table's features of ``rows`` (long, any shape S): each tensor indexed, (*S, ...), fp32."""
        if self.feature_kind is None:
            raise CamimError(
                "the batch carries feature-row ids (frozen-visual mode) but the model's vision backbone has "
                "no feature table attached (camim.speed.use_cached_features)"
            )
        if kind != self.feature_kind:
            raise CamimError(
                f"this model consumes {kind!r} features; the attached feature table holds {self.feature_kind!r}"
            )
        if rows.dtype != torch.long:
            raise CamimError(f"feature-row ids must be int64, got {rows.dtype}")
        n = self.features_0.shape[0]
        # checked on CPU only, and eagerly: on CUDA the gather asserts by itself, and a host sync would break
        # graph capture (and a traced graph: the check is skipped while torch.compile / dynamo traces)
        eager_cpu = rows.device.type == "cpu" and not torch.compiler.is_compiling()
        if eager_cpu and rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise DataError(f"row id out of range for a feature table of {n} rows")
        out = []
        for i in range(1 if kind == "tokens" else 4):
            f = getattr(self, f"features_{i}")[rows]
            out.append(f if f.dtype == torch.float32 else f.float())
        return out


def mean_pool(states: torch.Tensor, mask: torch.Tensor | None, pad_inclusive: bool) -> torch.Tensor:
    """Sentence vector: mean over all positions (released, pads included) or over real tokens only."""
    if pad_inclusive or mask is None:
        return states.mean(dim=1)
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)
