"""HVPNeT and HVPNeT + CAM / + MI / + CAM + MI (reference §5; CAM/MI per the §5.3 proposal).

Visual prefix (released ``HMNeTREModel``): for the main image and each of the m object crops (separate
backbone calls, as released), every stage map (layer1..layer4) is average-pooled with kernel = stride =
⌊H/2⌋ to 2x2, the four are concatenated on channels and raw ``.view``-ed to (B, 4, ΣC) -- 3840 for ResNet-50,
a memory reinterpretation, not a spatial flatten. ``encoder_conv`` (Linear(ΣC→800)·Tanh·Linear(800→4·2d))
gives 4 chunks of 2d; per BERT layer l, ``gates[l]`` mixes the chunks (softmax(leaky_relu(gate(mean chunk))))
into (B, 4, 2d); main + m objects give a 16-token key/value prefix, raw-reshaped to (B, heads, 16, d/heads).

The prefix enters BERT through transformers' own extension point: a ``DynamicCache`` pre-filled with the 16
prefix keys/values per layer (the self-attention appends the text's keys/values after them), explicit
position ids starting at 0 (HVPNeT forces past length 0), and the 2-D mask ones(16) ++ text mask, from
which transformers sizes the key axis (its own prefix-tuning path).

+CAM (§5.3): a caption encoder (bert2) gives C_W and C_S; each image's raw prefix tokens V (B, 4, ΣC) are
projected by ``linear_pic`` (ΣC→d), aligned by the Caption-Aware Module (shared over main and objects),
and the 4 visual-query positions of its (B, 4+Lc, d) output feed ``encoder_conv`` (first layer d→800).
+MI (§5.3): v = tanh(mi_visual(Σ over the main image's CAM positions)) (without CAM: over its 4 projected
prefix tokens), f = tanh(mi_final([h<s> ; h<o>])); InfoNCE(v, f) with f as the anchor ("O&G": O = v, G = f).

Classifier: Linear(2d→C) over [h<s> ; h<o>] (HVPNeT's dropout is defined but not applied; its optimizer
never updates this layer -- the training option ``optim.train_classifier``, docs/training.md).
Missing modalities: the main image is required (CamimError); absent object crops are zero images
(released zero-padding, ``objects_mask`` 0); captions are required only with CAM.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from camim.errors import CamimError
from camim.models.base import MREModel
from camim.models.batch import MREBatch
from camim.models.capabilities import Capabilities
from camim.models.caption_aware import CaptionAwareModule
from camim.models.classifier import entity_states
from camim.models.encoders import mean_pool
from camim.models.fusion import masked_sum

N_CHUNKS = 4


class HVPNeT(MREModel):
    """HVPNeT's gated visual prefix on a Hugging Face BERT, with optional CAM and MI."""

    model_name = "hvpnet"
    summary = "HVPNeT (Chen et al., NAACL 2022 Findings)"
    # the prefix is built from images; MI is the visual info v against the final feature f ("O&G")
    capabilities = Capabilities(
        reads=frozenset({"image", "objects", "caption"}),
        visual_modes=("images",),
        cam=True,
        mi=True,
        mi_pairs=("O&G",),
    )
    visual_feature_kind = "pyramid"

    def _build(self) -> None:
        cfg = self.config
        self.bert = self._text_encoder("bert")
        bc = self.bert.config
        hidden, self.n_layers, self.n_heads = bc.hidden_size, bc.num_hidden_layers, bc.num_attention_heads
        self.resnet = self._vision_encoder("resnet")
        prefix_in = sum(self.resnet.channels[-4:])  # 256 + 512 + 1024 + 2048 = 3840 for ResNet-50
        if cfg.uses_cam or cfg.uses_mi:
            self.linear_pic = nn.Linear(prefix_in, hidden)
        if cfg.uses_cam:
            self.bert2 = self._text_encoder("bert2", cfg.caption_encoder)
            self.cam = CaptionAwareModule(hidden, cfg.cam, cfg.cam_dropout)
        conv_in = hidden if cfg.uses_cam else prefix_in
        self.encoder_conv = nn.Sequential(
            nn.Linear(conv_in, cfg.hvpnet_prefix_hidden),
            nn.Tanh(),
            nn.Linear(cfg.hvpnet_prefix_hidden, N_CHUNKS * 2 * hidden),
        )
        self.gates = nn.ModuleList(
            [nn.Linear(cfg.hvpnet_prompt_len * 2 * hidden, N_CHUNKS) for _ in range(self.n_layers)]
        )
        if cfg.uses_mi:
            self.mi_visual = nn.Linear(hidden, hidden)
            self.mi_final = nn.Linear(2 * hidden, hidden)
        self.classifier = nn.Linear(2 * hidden, self.num_labels)

    def output_layer(self) -> nn.Linear:
        return self.classifier

    @property
    def required_modalities(self) -> set[str]:
        return {"image", "objects"} | ({"caption"} if self.config.uses_cam else set())

    # --------------------------------------------------------------- prefix
    def prefix_tokens(self, batch: MREBatch, modality: str, slot: int | None = None) -> torch.Tensor:
        """One image's raw prefix tokens V (B, prompt_len, ΣC): its 4 stage maps pooled to 2x2
        (``VisionBackbone.features(kind="pyramid")``, or their stored rows), concatenated, raw view."""
        pooled = self._visual_features(batch, modality, slot)
        return torch.cat(pooled, dim=1).reshape(pooled[0].shape[0], self.config.hvpnet_prompt_len, -1)

    def _gated(self, guids: torch.Tensor, layer: int) -> torch.Tensor:
        """One image's (B, prompt_len, 4·2d) -> gated key/value tokens (B, prompt_len, 2d) for ``layer``."""
        chunks = guids.chunk(N_CHUNKS, dim=-1)
        mean = torch.stack(chunks).sum(0).flatten(1) / N_CHUNKS
        gate = torch.softmax(F.leaky_relu(self.gates[layer](mean)), dim=-1)  # (B, 4)
        return sum(gate[:, i, None, None] * chunks[i] for i in range(N_CHUNKS))

    def visual_prefix(
        self, batch: MREBatch, guide
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """-> (per-layer (key, value) each (B, heads, 16, d/heads), main image's MI visual tokens)."""
        objects = batch.objects if batch.objects_rows is None else batch.objects_rows
        if (batch.image is None and batch.image_rows is None) or objects is None:
            raise CamimError(
                "hvpnet needs batch.image and batch.objects (or their *_rows; the visual prefix)"
            )
        b, m = objects.shape[:2]
        # the main image, then each object crop in its own backbone call (released ImageModel)
        slots = [("image", None)] + [("objects", i) for i in range(m)]
        guids, main_tokens = [], None
        for idx, (modality, slot) in enumerate(slots):
            v = self.prefix_tokens(batch, modality, slot)
            if self.config.uses_cam:
                s, w, w_mask = guide
                feats, mask = self.cam(self.linear_pic(v), s, w, w_mask)  # Eq. (5)-(11) on the prefix tokens
                if idx == 0:
                    main_tokens = masked_sum(feats, None if w_mask is None else mask)
                v = feats[:, : self.config.hvpnet_prompt_len]
            elif self.config.uses_mi and idx == 0:
                main_tokens = self.linear_pic(v).sum(dim=1)
            guids.append(self.encoder_conv(v))
        hidden = self.bert.config.hidden_size
        past = []
        for layer in range(self.n_layers):
            kv = torch.cat([self._gated(g, layer) for g in guids], dim=1)  # (B, 16, 2d)
            key, value = kv.split(hidden, dim=-1)
            past.append(
                (
                    key.reshape(b, self.n_heads, -1, hidden // self.n_heads),  # raw reshape, as released
                    value.reshape(b, self.n_heads, -1, hidden // self.n_heads),
                )
            )
        return past, main_tokens

    # -------------------------------------------------------------- forward
    def encode(self, batch: MREBatch):
        cfg = self.config
        guide = None
        if cfg.uses_cam:
            if batch.caption_input_ids is None:
                raise CamimError("hvpnet + CAM needs captions (batch.caption_input_ids is None)")
            c_mask = batch.caption_attention_mask
            # C_W and C_S: the caption's word- and sentence-level features
            c_w = self.bert2(input_ids=batch.caption_input_ids, attention_mask=c_mask).last_hidden_state
            c_s = mean_pool(c_w, c_mask, cfg.fidelity.pad_inclusive_mean)
            guide = (c_s, c_w, None if cfg.fidelity.unmasked_attention else c_mask)
        past, main_tokens = self.visual_prefix(batch, guide)
        n_prefix = past[0][0].shape[2]
        b, length = batch.input_ids.shape
        # 2-D mask of length 16 + L: transformers sizes the key axis from it (its prefix-tuning path)
        mask = torch.cat([batch.attention_mask.new_ones(b, n_prefix), batch.attention_mask], dim=1)
        positions = torch.arange(length, device=batch.input_ids.device).unsqueeze(0).expand(b, -1)
        h_text = self.bert(
            input_ids=batch.input_ids,
            attention_mask=mask,
            token_type_ids=batch.token_type_ids,
            position_ids=positions,
            **{_cache_keyword(self.bert): DynamicCache(ddp_cache_data=past)},
        ).last_hidden_state
        t = entity_states(h_text, batch.head_pos, batch.tail_pos)
        logits = self.classifier(t)
        features = {"T": t}
        mi = None
        if cfg.uses_mi:
            v = torch.tanh(self.mi_visual(main_tokens))  # visual info
            f = torch.tanh(self.mi_final(t))  # final feature
            features.update(O_final=v, G_final=f)
            mi = self.mutual_information({"O": v, "G": f})  # Eq. (20)-(22)
        return logits, features, mi


def _cache_keyword(encoder: nn.Module) -> str:
    """The forward keyword of the key/value cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``
    (earlier releases, which would swallow an unknown ``cache=`` and run without the visual prefix)."""
    params = inspect.signature(encoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
