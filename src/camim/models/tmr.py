"""TMR and TMR + CAM / + MI / + CAM + MI (CAMIM) exactly as released (reference §1, §6).

Images mode (``visual_mode="images"``, the paper's setting). Per step the vision backbone runs on the original
image, the generated image and their object crops (four calls, as released, so BatchNorm sees the same
batches). Each stream's 7x7 map gives 49 patch tokens P, projected by ``linear_pic``:

- TMR: the full-image stream goes straight to the fusion attention, pooled term Σ_patches; each object is
  summed over its patches first, pooled term Σ_objects.
- +CAM: the Caption-Aware Module (one shared instance) runs per stream -- guided by the caption (C_S, C_W)
  on the original side and by the text window (T_S, T_W) on the generated side -- giving O_F / G_F and
  per-object 89-token maps; pooled terms tanh(Σ O_F) and tanh(mean_m Σ O_obj[m]).
- Fusion (Eq. 15-16), strong/weak gating by the correlation scores, O_final / G_final, classifier over
  [h_head ; h_tail ; phrase ; O_final ; G_final] (Eq. 17-18), InfoNCE (Eq. 20-22), loss (Eq. 23).

Text-caption mode (``visual_mode="text-caption"``; the offline regime: text + captions, no images, objects
or scores). The two branches keep their roles with the caption standing in for the image:

- original branch = caption-guided attention over the text: P_O = linear_pic(T_W), guided by (C_S, C_W);
- generated branch = text-guided attention over the caption: P_G = linear_pic(C_W), guided by (T_S, T_W)
  (the generated image is a rendering of the text; the caption is the other modality's description);
- no object path and no scores: ori_final = fine + pooled (the released gate with strong = 1).
Everything else (fusion over the main text states, classifier, InfoNCE between O_final and G_final) is the
released computation, so the caption reaches the prediction through CAM and through the MI loss.
"""

from __future__ import annotations

import torch
from torch import nn

from camim.errors import CamimError
from camim.models.base import MREModel
from camim.models.batch import MREBatch
from camim.models.caption_aware import CaptionAwareModule
from camim.models.classifier import RelationClassifier, entity_states
from camim.models.encoders import mean_pool
from camim.models.fusion import FusionModule, masked_sum


class TMR(MREModel):
    """TMR with the optional Caption-Aware Module (``cam``) and InfoNCE loss (``mi``)."""

    model_name = "tmr"

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
        c_mask = batch.caption_attention_mask
        out["C_W"] = self.bert2(input_ids=batch.caption_input_ids, attention_mask=c_mask).last_hidden_state
        out["C_S"] = mean_pool(out["C_W"], c_mask, pad_incl)  # released: mean over all 40 positions
        n = self.config.text_window
        t_ids, t_mask = batch.input_ids[:, :n], batch.attention_mask[:, :n]
        out["T_W"] = self.bert2(
            input_ids=t_ids, attention_mask=t_mask
        ).last_hidden_state  # released token[:, :40]
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

    def _full_path(self, feats, mask, h_text, text_mask) -> torch.Tensor:
        """fine + pooled for a full-image (or text-caption) stream -> (B, d)."""
        fine = self.fusion.fine(feats, mask, h_text, text_mask)  # Eq. (15)/(16)
        pooled = masked_sum(feats, mask)
        if not self.config.fidelity.sum_pooling:  # clean reading: means over real positions, no saturation
            n = mask.sum(1, keepdim=True).clamp(min=1).to(feats.dtype) if mask is not None else feats.shape[1]
            fine, pooled = fine / n, pooled / n
        return fine + (torch.tanh(pooled) if self.config.uses_cam else pooled)

    def _object_path(self, pixels, guide, h_phr, phr_mask) -> torch.Tensor:
        """coarse + pooled for one side's m object crops (B, m, 3, H, W) -> (B, d)."""
        b, m = pixels.shape[:2]
        patches = self.resnet.patch_tokens(pixels.flatten(0, 1))  # (B*m, 49, C)
        if self.config.uses_cam:
            s, w, w_mask = guide
            rep = lambda t: None if t is None else t.repeat_interleave(m, dim=0)  # noqa: E731
            feats, mask = self.cam(self.linear_pic(patches), rep(s), rep(w), rep(w_mask))  # per object
            o = masked_sum(feats, self._mask(mask)).view(b, m, -1)  # Σ over the 89 tokens of each object
            pooled = torch.tanh(o.mean(dim=1))
        else:
            o = self.linear_pic(patches.sum(dim=1)).view(b, m, -1)  # TMR: Σ patches, then linear_pic
            pooled = o.sum(dim=1)
        return self.fusion.coarse(o, h_phr, phr_mask) + pooled

    # -------------------------------------------------------------- forward
    def encode(self, batch: MREBatch):
        cfg = self.config
        h_text = self.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        text_mask = self._mask(batch.attention_mask)
        if batch.phrase_input_ids is None:
            raise CamimError("this model needs phrase ids (batch.phrase_input_ids is None)")
        phr_mask = batch.phrase_attention_mask
        h_phr = self.bert(input_ids=batch.phrase_input_ids, attention_mask=phr_mask).last_hidden_state
        phr_mask = None if cfg.fidelity.phrase_unmasked else phr_mask
        g = self._guides(batch) if self.needs_bert2 else None
        guide_o = (g["C_S"], g["C_W"], g["C_mask"]) if cfg.uses_cam else None
        guide_g = (g["T_S"], g["T_W"], g["T_mask"]) if cfg.uses_cam else None

        if self.images:
            for name in ("image", "generated_image", "objects", "generated_objects", "scores"):
                if getattr(batch, name) is None:
                    raise CamimError(f"visual_mode='images' needs batch.{name}; it is None")
            p_o = self.linear_pic(self.resnet.patch_tokens(batch.image))  # MLP(F_V), (B, 49, d)
            p_g = self.linear_pic(self.resnet.patch_tokens(batch.generated_image))  # MLP(F_T)
            o_f, o_mask = self._stream(p_o, None, guide_o)  # O_F, Eq. (11)
            g_f, g_mask = self._stream(p_g, None, guide_g)  # G_F, Eq. (14)
            o_mask, g_mask = self._mask(o_mask), self._mask(g_mask)
            weak_ori, strong_ori, weak_dif, strong_dif = batch.scores.unbind(dim=1)
            ori = strong_ori[:, None] * self._full_path(o_f, o_mask, h_text, text_mask)
            ori = ori + weak_ori[:, None] * self._object_path(batch.objects, guide_o, h_phr, phr_mask)
            dif = strong_dif[:, None] * self._full_path(g_f, g_mask, h_text, text_mask)
            dif = dif + weak_dif[:, None] * self._object_path(
                batch.generated_objects, guide_g, h_phr, phr_mask
            )
        else:  # text-caption mode (module docstring)
            p_o = self.linear_pic(g["T_W"])  # the text stands in for the original image's tokens
            p_g = self.linear_pic(g["C_W"])  # the caption stands in for the generated image's tokens
            o_f, o_mask = self._stream(p_o, g["T_mask"], guide_o)  # caption-guided
            g_f, g_mask = self._stream(p_g, g["C_mask"], guide_g)  # text-guided
            o_mask, g_mask = self._mask(o_mask), self._mask(g_mask)
            ori = self._full_path(o_f, o_mask, h_text, text_mask)
            dif = self._full_path(g_f, g_mask, h_text, text_mask)
        o_final = self.fusion.final(ori)  # Eq. (15): O_final
        g_final = self.fusion.final(dif)  # Eq. (16): G_final
        t = entity_states(h_text, batch.head_pos, batch.tail_pos)
        phrase = self.linear_phrases(masked_sum(h_phr, phr_mask))
        logits, f_final = self.classifier(torch.cat([t, phrase, o_final, g_final], dim=-1))  # Eq. (17)-(18)
        features = {"O_final": o_final, "G_final": g_final, "F_final": f_final, "T": t}
        mi = None
        if cfg.uses_mi:
            mi = self.mutual_information({"O": o_final, "G": g_final, "F": f_final, "T": t})  # Eq. (20)-(22)
        return logits, features, mi
