"""TMR and TMR + CAM / + MI / + CAM + MI (CAMIM) exactly as released (reference §1, §6).

Images mode (``visual_mode="images"``, the paper's setting; ``_images_forward``). Per step the vision backbone
runs four times, in the released order: generated image, original image, generated crops, original crops
(so BatchNorm's running statistics follow the released run). Each stream's 7x7 map gives 49 patch tokens P,
projected by ``linear_pic``:

- TMR: the full-image stream goes straight to the fusion attention, pooled term Σ_patches; each object is
  summed over its patches first, pooled term Σ_objects.
- +CAM: the Caption-Aware Module (one shared instance) runs per stream -- guided by the caption (C_S, C_W)
  on the original side and by the text window (T_S, T_W) on the generated side -- giving O_F / G_F and
  per-object 89-token maps; pooled terms tanh(Σ O_F) and tanh(mean_m Σ O_obj[m]).
- Fusion (Eq. 15-16): strong/weak gating by the correlation scores gives O_gated / G_gated (the released
  ``ori_final`` / ``dif_final``), projected to O_final / G_final; classifier over
  [h_head ; h_tail ; phrase ; O_final ; G_final] (Eq. 17-18), InfoNCE (Eq. 20-22), loss (Eq. 23).

Text-caption mode (``visual_mode="text-caption"``, ``_text_caption_forward``; the offline regime: text + captions, no images, objects
or scores). The two branches keep their roles with the caption standing in for the image:

- original branch = caption-guided attention over the text: P_O = linear_pic(T_W), guided by (C_S, C_W);
- generated branch = text-guided attention over the caption: P_G = linear_pic(C_W), guided by (T_S, T_W)
  (the generated image is a rendering of the text; the caption is the other modality's description);
- no object path and no scores: O_gated = fine + pooled (the released gate with strong = 1).
Everything else (fusion over the main text states, classifier, InfoNCE between O_final and G_final) is the
released computation, so the caption reaches the prediction through CAM and through the MI loss.
"""

from __future__ import annotations

import torch
from torch import nn

from camim.errors import CamimError
from camim.models.base import MREModel
from camim.models.batch import MREBatch
from camim.models.capabilities import Capabilities
from camim.models.caption_aware import CaptionAwareModule
from camim.models.classifier import RelationClassifier, entity_states
from camim.models.encoders import mean_pool
from camim.models.fusion import FusionModule, gate, masked_sum


class TMR(MREModel):
    """TMR with the optional Caption-Aware Module (``cam``) and InfoNCE loss (``mi``)."""

    model_name = "tmr"
    summary = "TMR (Zheng et al., ACL 2023)"
    capabilities = Capabilities(
        reads=frozenset(
            {"image", "objects", "generated_image", "generated_objects", "scores", "phrase", "caption"}
        ),
        visual_modes=("images", "text-caption"),
        cam=True,
        mi=True,
    )
    visual_feature_kind = "tokens"
    # camim.speed (speed.merge_encoder_calls): bert2 encodes captions and text windows in one call
    merge_encoder_calls = False

    @property
    def images(self) -> bool:
        return self.config.visual_mode == "images"

    @property
    def needs_bert2(self) -> bool:
        return self.config.uses_cam or not self.images

    def _build(self) -> None:
        cfg = self.config
        self.bert = self._text_encoder("bert")
        hidden = self.bert.config.hidden_size
        if self.needs_bert2:
            self.bert2 = self._text_encoder("bert2", cfg.caption_encoder)
            if self.bert2.config.hidden_size != hidden:
                raise CamimError("the caption encoder and the text encoder must have the same hidden size")
        if self.images:
            self.resnet = self._vision_encoder("resnet")
            self.linear_pic = nn.Linear(self.resnet.out_channels, hidden)
        else:
            self.linear_pic = nn.Linear(hidden, hidden)
        if cfg.uses_cam:
            self.cam = CaptionAwareModule(hidden, cfg.cam, cfg.cam_dropout)
        self.fusion = FusionModule(hidden, objects=self.images)
        self.linear_phrases = nn.Linear(hidden, 2 * hidden)
        self.classifier = RelationClassifier(6 * hidden, 2 * hidden, self.num_labels, cfg.dropout)

    @property
    def required_modalities(self) -> set[str]:
        if not self.images:
            return {"caption"}
        needs = {"image", "objects", "generated_image", "generated_objects", "scores", "phrase"}
        return needs | ({"caption"} if self.config.uses_cam else set())

    def processor_needs(self) -> set[str]:
        return self.required_modalities | {"phrase"}

    # ---------------------------------------------------------------- parts
    def _mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Masks are used only when the unmasked-attention quirk is off."""
        return None if self.config.fidelity.unmasked_attention else mask

    def _guides(self, batch: MREBatch) -> dict[str, torch.Tensor | None]:
        """bert2 encodings: C_W/C_S of the caption and T_W/T_S of the first ``text_window`` marked tokens."""
        out: dict[str, torch.Tensor | None] = {}
        pad_incl = self.config.fidelity.pad_inclusive_mean
        if batch.caption_input_ids is None:
            raise CamimError("this model needs captions (batch.caption_input_ids is None)")
        c_ids, c_mask = batch.caption_input_ids, batch.caption_attention_mask
        n = self.config.text_window
        t_ids, t_mask = batch.input_ids[:, :n], batch.attention_mask[:, :n]  # released token[:, :40]
        if self.merge_encoder_calls and c_ids.shape == t_ids.shape:
            # one bert2 call over [captions ; text windows] (2B, 40): per sample the same encodings as two
            # calls (attention never crosses samples), half the kernel launches; dropout masks are drawn in
            # another order than the released two calls' (speed.merge_encoder_calls, docs/speed.md)
            both = self.bert2(input_ids=torch.cat([c_ids, t_ids]), attention_mask=torch.cat([c_mask, t_mask]))
            out["C_W"], out["T_W"] = both.last_hidden_state.split(c_ids.shape[0])
        else:
            out["C_W"] = self.bert2(input_ids=c_ids, attention_mask=c_mask).last_hidden_state
            out["T_W"] = self.bert2(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        out["C_S"] = mean_pool(out["C_W"], c_mask, pad_incl)  # released: mean over all 40 positions
        out["T_S"] = mean_pool(out["T_W"], t_mask, pad_incl)
        out["C_mask"], out["T_mask"] = self._mask(c_mask), self._mask(t_mask)
        return out

    def _stream(
        self,
        p1: torch.Tensor,
        p_mask: torch.Tensor | None,
        guide: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One stream's features (O_F / G_F) and token mask: CAM when configured, else the projected tokens."""
        if guide is None:
            return p1, p_mask
        s, w, w_mask = guide
        return self.cam(p1, s, w, w_mask, p_mask)  # Eq. (5)-(14)

    def _full_path(self, X_F, mask, H_text, text_mask) -> torch.Tensor:
        """fine + pooled for a full-image (or text-caption) stream -> (B, d) (``FusionModule.full_image_path``)."""
        return self.fusion.full_image_path(
            X_F, mask, H_text, text_mask, self.config.fidelity.sum_pooling, tanh_pooled=self.config.uses_cam
        )

    def _tokens(self, batch: MREBatch, modality: str) -> torch.Tensor:
        """Patch tokens of one image modality: (B, 49, C) for an image, (B, m, 49, C) for one side's m object
        crops (one backbone call over all of them), or their stored rows in frozen-visual mode."""
        return self._visual_features(batch, modality)[0]

    def _object_path(self, F_obj, guide, H_phr, phr_mask) -> torch.Tensor:
        """coarse + pooled for one side's object patch tokens F_obj (B, m, 49, C) -> (B, d)."""
        b, m = F_obj.shape[:2]
        if self.config.uses_cam:
            s, w, w_mask = guide
            rep = lambda t: None if t is None else t.repeat_interleave(m, dim=0)  # noqa: E731
            # Eq. (5)-(14) per object: the m crops of each sample are m rows of one CAM batch
            feats, mask = self.cam(self.linear_pic(F_obj.flatten(0, 1)), rep(s), rep(w), rep(w_mask))
            o = masked_sum(feats, self._mask(mask)).view(b, m, -1)  # o_m: Σ over the 89 tokens of each object
        else:  # TMR: Σ over the 49 patches of each object, then linear_pic
            o = self.linear_pic(F_obj.sum(dim=2))
        return self.fusion.object_path(o, H_phr, phr_mask, cam=self.config.uses_cam)

    # -------------------------------------------------------------- forward
    def _images_forward(
        self, batch: MREBatch, guides: dict | None, H_text, text_mask, H_phr, phr_mask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's setting (images mode) -> (O_gated, G_gated), the gated inputs of Eq. (15)/(16)'s
        final projection."""
        for name in ("image", "generated_image", "objects", "generated_objects"):
            if getattr(batch, name) is None and getattr(batch, f"{name}_rows") is None:
                raise CamimError(f"visual_mode='images' needs batch.{name} (or {name}_rows); it is None")
        if batch.scores is None:
            raise CamimError("visual_mode='images' needs batch.scores; it is None")
        # The four backbone calls in the released order (CAMIM.forward: generated image, original image,
        # generated crops, original crops). In train mode BatchNorm's running statistics depend on it.
        F_VT = self._tokens(batch, "generated_image")  # Eq. (2): F_{V_T}, (B, 49, C)
        F_V = self._tokens(batch, "image")  # Eq. (1): F_V
        F_OT = self._tokens(batch, "generated_objects")  # Eq. (2): F_{O_T}, (B, m, 49, C)
        F_O = self._tokens(batch, "objects")  # Eq. (1): F_O
        guide_O = (guides["C_S"], guides["C_W"], guides["C_mask"]) if self.config.uses_cam else None
        guide_G = (guides["T_S"], guides["T_W"], guides["T_mask"]) if self.config.uses_cam else None
        O_F, O_mask = self._stream(self.linear_pic(F_V), None, guide_O)  # Eq. (5), (7)-(11): O_F
        G_F, G_mask = self._stream(self.linear_pic(F_VT), None, guide_G)  # Eq. (6), (12)-(14): G_F
        weak_ori, strong_ori, weak_dif, strong_dif = batch.scores.unbind(dim=1)
        O_gated = gate(  # Eq. (15) before its final projection (released: ori_final)
            strong_ori,
            self._full_path(O_F, self._mask(O_mask), H_text, text_mask),
            weak_ori,
            self._object_path(F_O, guide_O, H_phr, phr_mask),
        )
        G_gated = gate(  # Eq. (16) before its final projection (released: dif_final)
            strong_dif,
            self._full_path(G_F, self._mask(G_mask), H_text, text_mask),
            weak_dif,
            self._object_path(F_OT, guide_G, H_phr, phr_mask),
        )
        return O_gated, G_gated

    def _text_caption_forward(self, guides: dict, H_text, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The offline regime (module docstring): the text stands in for the original image's tokens and the
        caption for the generated image's; no objects, no scores (strong = 1) -> (O_gated, G_gated)."""
        T_W, C_W, T_mask, C_mask = guides["T_W"], guides["C_W"], guides["T_mask"], guides["C_mask"]
        guide_O = (guides["C_S"], C_W, C_mask) if self.config.uses_cam else None  # caption-guided
        guide_G = (guides["T_S"], T_W, T_mask) if self.config.uses_cam else None  # text-guided
        O_F, O_mask = self._stream(self.linear_pic(T_W), T_mask, guide_O)  # O_F (Eq. 11), over the text
        G_F, G_mask = self._stream(self.linear_pic(C_W), C_mask, guide_G)  # G_F (Eq. 14), over the caption
        O_gated = self._full_path(O_F, self._mask(O_mask), H_text, text_mask)  # Eq. (15), strong = 1
        G_gated = self._full_path(G_F, self._mask(G_mask), H_text, text_mask)  # Eq. (16), strong = 1
        return O_gated, G_gated

    def encode(self, batch: MREBatch):
        cfg = self.config
        H_text = self.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        text_mask = self._mask(batch.attention_mask)
        if batch.phrase_input_ids is None:
            raise CamimError("this model needs phrase ids (batch.phrase_input_ids is None)")
        phr_mask = batch.phrase_attention_mask
        H_phr = self.bert(input_ids=batch.phrase_input_ids, attention_mask=phr_mask).last_hidden_state
        phr_mask = None if cfg.fidelity.phrase_unmasked else phr_mask
        guides = self._guides(batch) if self.needs_bert2 else None
        if self.images:
            O_gated, G_gated = self._images_forward(batch, guides, H_text, text_mask, H_phr, phr_mask)
        else:
            O_gated, G_gated = self._text_caption_forward(guides, H_text, text_mask)
        O_final = self.fusion.final(O_gated)  # Eq. (15)
        G_final = self.fusion.final(G_gated)  # Eq. (16)
        T = entity_states(H_text, batch.head_pos, batch.tail_pos)
        phrase = self.linear_phrases(masked_sum(H_phr, phr_mask))
        logits, F_final = self.classifier(torch.cat([T, phrase, O_final, G_final], dim=-1))  # Eq. (17)-(18)
        features = {"O_final": O_final, "G_final": G_final, "F_final": F_final, "T": T}
        mi = None
        if cfg.uses_mi:
            mi = self.mutual_information({"O": O_final, "G": G_final, "F": F_final, "T": T})  # Eq. (20)-(22)
        return logits, features, mi
