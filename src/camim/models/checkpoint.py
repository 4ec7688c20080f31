"""Loading the released CAMIM / TMR / HVPNeT checkpoints into our modules, and the CAMIM/TMR inverse mapping.

Released layouts (tests/models/fixtures/released_*.tsv list them tensor by tensor):

- CAMIM / TMR (reference §9): ``torch.save({'state_dict': SoftmaxNN.state_dict()})``: ``sentence_encoder.
  bert.*``, ``sentence_encoder.bert2.*`` (CAMIM only), ``sentence_encoder.model_resnet50.*`` (timm naming),
  ``sentence_encoder.linear_pic`` ... ``fc``.
- HVPNeT (``HMNeTREModel``, reference §5.1): ``torch.save(model.state_dict())``: ``bert.*``,
  ``image_model.resnet.*`` (torchvision naming, the same as timm's for ResNet-50), ``encoder_conv.*``,
  ``gates.*``, ``classifier.*``.

We open the file with ``torch.load(weights_only=True)`` (no unpickling of code), map every key, and refuse a
partial load: any checkpoint key we cannot place, any model key the checkpoint lacks, or a shape mismatch is
an error naming the keys, raised before the model's weights are even allocated (the check runs against a
meta-device skeleton). Keys of layers the released forward never uses (``linear``, ``linear_weights``,
``linear_x``, the BERT poolers, the ResNet ``fc``) and the BERT ``position_ids`` buffers are ignored *by
name* and listed in the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from camim.errors import CamimError
from camim.models.config import ModelConfig

# MNRE's ours_rel2id.json order (reference §4.1), used when a 23-row classifier comes without labels.
MNRE_LABELS = [
    "None", "/per/per/parent", "/per/per/siblings", "/per/per/couple", "/per/per/neighbor", "/per/per/peer",
    "/per/per/charges", "/per/per/alumi", "/per/per/alternate_names", "/per/org/member_of",
    "/per/loc/place_of_residence", "/per/loc/place_of_birth", "/org/org/alternate_names", "/org/org/subsidiary",
    "/org/loc/locate_at", "/loc/loc/contain", "/per/misc/present_in", "/per/misc/awarded", "/per/misc/race",
    "/per/misc/religion", "/per/misc/nationality", "/misc/misc/part_of", "/misc/loc/held_on",
]  # fmt: skip

SE = "sentence_encoder."
# released name (after sentence_encoder.) -> our module path
_DIRECT = {
    "linear_pic": "linear_pic",
    "encoder_conv_sentence": "cam.encoder_conv_sentence",
    "encoder_conv_word": "cam.encoder_conv_word",
    "encoder_conv_back": "cam.encoder_conv_back",
    "attention": "cam.attention",
    "linear_q_fine": "fusion.linear_q_fine",
    "linear_k_fine": "fusion.linear_k_fine",
    "linear_v_fine": "fusion.linear_v_fine",
    "linear_q_coarse": "fusion.linear_q_coarse",
    "linear_k_coarse": "fusion.linear_k_coarse",
    "linear_v_coarse": "fusion.linear_v_coarse",
    "linear_extend_pic": "fusion.linear_extend_pic",
    "linear_phrases": "linear_phrases",
    "linear_final": "classifier.linear_final",
    "bert": "bert",
    "bert2": "bert2",
}
_UNUSED = re.compile(
    r"^(sentence_encoder\.(linear|linear_weights|linear_x)\.|linear\.|sentence_encoder\.bert2?\.pooler\."
    r"|sentence_encoder\.model_resnet50\.fc\.)"
)
_POSITION_IDS = re.compile(r"^sentence_encoder\.bert2?\.embeddings\.position_ids$")
HVPNET_RESNET = "image_model.resnet."
_HVPNET_UNUSED = re.compile(r"^(bert\.pooler\.|image_model\.resnet\.fc\.)")
_HVPNET_POSITION_IDS = re.compile(r"^bert\.embeddings\.position_ids$")


def timm_to_hf_resnet(key: str) -> str | None:
    """timm ResNet key -> transformers ResNetModel key (None if it has no counterpart)."""
    if m := re.fullmatch(r"(conv1|bn1)\.(.+)", key):
        part = "convolution" if m[1] == "conv1" else "normalization"
        return f"embedder.embedder.{part}.{m[2]}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", key):
        part = "convolution" if m[3] == "conv" else "normalization"
        return f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[4]) - 1}.{part}.{m[5]}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.(0|1)\.(.+)", key):
        part = "convolution" if m[3] == "0" else "normalization"
        return f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.{part}.{m[4]}"
    return None


def hf_to_timm_resnet(key: str) -> str:
    """transformers ResNetModel key -> timm ResNet key (inverse of :func:`timm_to_hf_resnet`)."""
    if m := re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(.+)", key):
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    if m := re.fullmatch(
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.(convolution|normalization)\.(.+)", key
    ):
        kind = "conv" if m[4] == "convolution" else "bn"
        return f"layer{int(m[1]) + 1}.{m[2]}.{kind}{int(m[3]) + 1}.{m[5]}"
    if m := re.fullmatch(
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.(.+)", key
    ):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{'0' if m[3] == 'convolution' else '1'}.{m[4]}"
    raise CamimError(f"no timm name for ResNet key {key!r}")


def _hvpnet_to_ours(key: str, timm_backbone: bool) -> str | None:
    """HMNeTREModel key -> our HVPNeT key (None if it has no place)."""
    if key.startswith(HVPNET_RESNET):
        sub = key[len(HVPNET_RESNET) :]
        mapped = sub if timm_backbone else timm_to_hf_resnet(sub)
        return None if mapped is None else "resnet.model." + mapped
    if key.split(".", 1)[0] in ("bert", "encoder_conv", "gates", "classifier"):
        return key
    return None


def _released_to_ours(key: str, timm_backbone: bool) -> str | None:
    if key.startswith("fc."):
        return "classifier." + key
    if not key.startswith(SE):
        return None
    rest = key[len(SE) :]
    if rest.startswith("model_resnet50."):
        sub = rest[len("model_resnet50.") :]
        mapped = sub if timm_backbone else timm_to_hf_resnet(sub)
        return None if mapped is None else "resnet.model." + mapped
    head, _, tail = rest.partition(".")
    if head in _DIRECT:
        return f"{_DIRECT[head]}.{tail}"
    return None


def released_name(key: str, layout: str, timm_backbone: bool) -> str | None:
    """Our state-dict key -> its name in the released ``layout`` ("camim"/"tmr" or "hvpnet"); None if none."""
    if key.startswith("resnet.model."):
        sub = key[len("resnet.model.") :]
        timm_key = sub if timm_backbone else hf_to_timm_resnet(sub)
        return (HVPNET_RESNET if layout == "hvpnet" else SE + "model_resnet50.") + timm_key
    if layout == "hvpnet":
        return key if key.split(".", 1)[0] in ("bert", "encoder_conv", "gates", "classifier") else None
    if key.startswith("classifier.fc."):
        return key[len("classifier.") :]
    for ours, released in sorted(((v, k) for k, v in _DIRECT.items()), key=lambda kv: -len(kv[0])):
        if key.startswith(ours + "."):
            return SE + released + key[len(ours) :]
    return None


def to_reference_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our TMR / CAMIM / HVPNeT (no CAM, no MI) state dict in the released layout (export, round-trip tests)."""
    name = getattr(model, "model_name", "")
    if name == "hvpnet" and not (model.config.uses_cam or model.config.uses_mi):
        layout = "hvpnet"
    elif name == "tmr" and model.config.visual_mode == "images":
        layout = "camim"
    else:
        raise CamimError(
            "only TMR-based models in visual_mode='images' and plain HVPNeT have a released checkpoint layout"
        )
    out = {}
    for key, tensor in model.state_dict().items():
        released = released_name(key, layout, model.resnet.is_timm)
        if released is None:
            raise CamimError(f"no released name for parameter {key!r}")
        out[released] = tensor
    return out


@dataclass
class ConversionReport:
    """What a conversion did: how many tensors matched, which were ignored (and why)."""

    matched: int = 0
    ignored: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"matched {self.matched} tensors; ignored {len(self.ignored)}"]
        lines += [f"  ignored {k}: {why}" for k, why in sorted(self.ignored.items())]
        return "\n".join(lines)


def read_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Open a released checkpoint safely (``weights_only=True``) and return its flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise CamimError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors of many kinds
        raise CamimError(f"{path}: cannot read as a weights-only torch checkpoint: {exc}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CamimError(f"{path}: expected {{'state_dict': {{name: tensor}}}} or a flat state dict")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def released_layout(state: dict[str, torch.Tensor]) -> str:
    """Which released model saved ``state``: "camim" (TMR + CAM), "tmr" or "hvpnet"."""
    if any(k.startswith(SE + "model_resnet50.") for k in state):
        return "camim" if any(k.startswith(SE + "bert2.") for k in state) else "tmr"
    if any(k.startswith(HVPNET_RESNET) for k in state) and any(k.startswith("gates.") for k in state):
        return "hvpnet"
    raise CamimError(
        "not a released CAMIM/TMR or HVPNeT checkpoint: no sentence_encoder.model_resnet50.* keys "
        f"(CAMIM/TMR) and no image_model.resnet.* + gates.* keys (HVPNeT's HMNeTREModel); its {len(state)} "
        f"keys begin {list(state)[:5]}"
    )


def infer_config(state: dict[str, torch.Tensor], base: ModelConfig | dict | None = None) -> ModelConfig:
    """The model config of a released state dict: CAMIM (bert2 + CAM present), TMR (no bert2) or HVPNeT.

    MI has no weights in CAMIM/TMR, so CAMIM implies mi unless ``base`` says otherwise; the released HVPNeT
    has no MI layers (ours add some), so it is always mi=False. ``base`` supplies the encoder sources."""
    cfg = ModelConfig.from_dict(base or {})
    layout = released_layout(state)
    common = {"visual_mode": "images", "text_encoder_pretrained": False, "vision_encoder_pretrained": False}
    if layout == "hvpnet":
        hidden = state["bert.embeddings.word_embeddings.weight"].shape[1]
        return replace(
            cfg,
            name="hvpnet",
            cam="none",
            mi=False,
            hvpnet_prefix_hidden=state["encoder_conv.0.weight"].shape[0],
            hvpnet_prompt_len=state["gates.0.weight"].shape[1] // (2 * hidden),
            **common,
        )
    camim = layout == "camim"
    return replace(
        cfg, name="tmr", cam="both" if camim else "none", mi=camim if base is None else cfg.mi, **common
    )


def load_reference_checkpoint(
    path: str | Path, config: ModelConfig | dict | None = None, labels: list[str] | None = None
):
    """Build the matching TMR / CAMIM / HVPNeT model and load a released checkpoint into it -> (model, report).

    ``config`` supplies the encoder sources (their configs; weights come from the checkpoint) and any
    switches; ``labels`` default to MNRE's 23 when the classifier has 23 rows. Refuses partial loads.
    """
    return load_reference_state_dict(read_reference_state_dict(path), config, labels, source=str(path))


def _build_labels(state: dict[str, torch.Tensor], hvpnet: bool, labels: list[str] | None):
    """The label names to build the model with, and why they are not the right ones (``None`` when they are).

    Without ``labels``, a 23-row classifier gets MNRE's labels; another row count gets placeholder names of
    that count, so that the keys are still checked and named in the same error, with the request to pass the
    names. A checkpoint without the classifier gets MNRE's: the classifier is then named as a missing key."""
    if labels is not None:
        return labels, None
    fc = "classifier.weight" if hvpnet else "fc.weight"
    rows = state[fc].shape[0] if fc in state else None
    if rows is None or rows == len(MNRE_LABELS):
        return MNRE_LABELS, None
    problem = f"the classifier ({fc}) has {rows} rows, not MNRE's {len(MNRE_LABELS)}: "
    problem += "pass the label names (--labels)"
    return [f"label_{i}" for i in range(rows)], problem


def _place(state: dict[str, torch.Tensor], skeleton, hvpnet: bool, report: ConversionReport):
    """Map every checkpoint key onto ``skeleton``'s -> (our tensors by key, the problems: keys with no
    place, model keys absent from the checkpoint, shape mismatches; each a count and the first names)."""
    unused, position_ids = (_HVPNET_UNUSED, _HVPNET_POSITION_IDS) if hvpnet else (_UNUSED, _POSITION_IDS)
    to_ours = _hvpnet_to_ours if hvpnet else _released_to_ours
    ours: dict[str, torch.Tensor] = {}
    source_key: dict[str, str] = {}  # our key -> the checkpoint's
    unplaced = []
    for key, tensor in state.items():
        if unused.match(key):
            report.ignored[key] = "layer unused by the released forward"
            continue
        if position_ids.match(key):
            report.ignored[key] = "constant position-ids buffer (non-persistent in transformers 5)"
            continue
        mapped = to_ours(key, skeleton.resnet.is_timm)
        if mapped is None:
            unplaced.append(key)
        else:
            ours[mapped], source_key[mapped] = tensor, key
    expected = skeleton.state_dict()
    layout = "hvpnet" if hvpnet else "camim"
    missing = [
        f"{released_name(k, layout, skeleton.resnet.is_timm)} (model tensor {k})"
        for k in sorted(set(expected) - set(ours))
    ]
    unplaced += sorted(source_key[k] for k in set(ours) - set(expected))
    bad_shape = [k for k in ours if k in expected and ours[k].shape != expected[k].shape]
    problems = []
    if unplaced:
        problems.append(f"{len(unplaced)} checkpoint keys have no place in the model: {unplaced[:8]}")
    if missing:
        problems.append(f"{len(missing)} model tensors are absent from the checkpoint: {missing[:8]}")
    if bad_shape:
        shapes = [
            f"{source_key[k]} {tuple(ours[k].shape)} vs {tuple(expected[k].shape)}" for k in bad_shape[:5]
        ]
        problems.append(f"{len(bad_shape)} shape mismatches (check the encoder configs): {shapes}")
    return ours, problems


def load_reference_state_dict(
    state: dict[str, torch.Tensor],
    config: ModelConfig | dict | None = None,
    labels: list[str] | None = None,
    source: str = "state dict",
):
    """:func:`load_reference_checkpoint` for a state dict already in memory (``source`` names it in errors).

    The keys are checked whatever the labels: unknown and missing keys are named in the same one-line error
    as a classifier that needs ``labels``."""
    from camim.models import build_model

    cfg = infer_config(state, config)
    hvpnet = cfg.name == "hvpnet"
    names, label_problem = _build_labels(state, hvpnet, labels)
    with torch.device("meta"):  # the expected names and shapes, without allocating or initialising weights
        skeleton = build_model(cfg, names)
    report = ConversionReport()
    ours, problems = _place(state, skeleton, hvpnet, report)
    if problems:
        problems += [label_problem] if label_problem else []
        raise CamimError(f"{source}: refusing a partial load: " + "; ".join(problems))
    if label_problem:
        raise CamimError(f"{source}: {label_problem}")
    model = build_model(cfg, names)
    model.load_state_dict(ours, strict=True)
    report.matched = len(ours)
    model.eval()
    return model, report
