"""Backbones: a Hugging Face text encoder and a vision backbone that gives a spatial feature map.

Both load through ``from_pretrained`` (hub id or local folder). With ``pretrained=False`` the model is
built from the folder's/hub config with random weights (offline presets and tests). ``save_pretrained``
of an extractor stores the encoder configs so ``load_model`` rebuilds them without any download.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from camim.errors import CamimError


def _wrap(kind: str, source: str, exc: Exception) -> CamimError:
    return CamimError(f"cannot load the {kind} {source!r}: {type(exc).__name__}: {exc}")


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source)`` (hub id or a folder with vocab.txt / tokenizer.json)."""
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # noqa: BLE001 - many loader errors; re-raised as one user error
        raise _wrap("tokenizer", source, exc) from exc


def load_text_encoder(source: str | PretrainedConfig, pretrained: bool = True) -> nn.Module:
    """A text encoder (e.g. ``BertModel``) without its pooler; random weights from its config if not pretrained."""
    try:
        if isinstance(source, PretrainedConfig):
            return AutoModel.from_config(source, add_pooling_layer=False)
        if pretrained:
            return AutoModel.from_pretrained(source, add_pooling_layer=False)
        return AutoModel.from_config(AutoConfig.from_pretrained(source), add_pooling_layer=False)
    except CamimError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _wrap("text encoder", str(getattr(source, "name_or_path", source)), exc) from exc


class VisionBackbone(nn.Module):
    """A CNN giving its stage maps: ``forward(pixels) -> list of (N, C_i, H_i, W_i)``, last = the 7x7 map.

    Default: transformers' ``ResNetModel`` (``microsoft/resnet-50``). ``timm/...`` names go through the optional
    timm package (``features_only``), the weights the authors used being ``timm/resnet50.a1_in1k``.
    """

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
                    self.model = AutoModel.from_pretrained(source)
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


def mean_pool(states: torch.Tensor, mask: torch.Tensor | None, pad_inclusive: bool) -> torch.Tensor:
    """Sentence vector: mean over all positions (released, pads included) or over real tokens only."""
    if pad_inclusive or mask is None:
        return states.mean(dim=1)
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)
