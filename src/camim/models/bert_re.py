"""The text-only baseline: BERT with OpenNRE entity markers (Table 1, "BERT").

rep = Linear(2d -> d)([h at [unused0] ; h at [unused2]]); logits = fc(Dropout(rep)) (OpenNRE
BERTEntityEncoder + SoftmaxNN). Needs no modality besides the text; ignores any other batch field.
"""

from __future__ import annotations

import torch

from camim.models.base import MREModel
from camim.models.batch import MREBatch
from camim.models.capabilities import Capabilities
from camim.models.classifier import RelationClassifier, entity_states


class BertRE(MREModel):
    """Text-only relation extractor over entity-marker states."""

    model_name = "bert"
    summary = "the text-only BERT baseline (entity-marker representation, no image)"
    capabilities = Capabilities()  # text only: no visual stream, no captions, no CAM, no MI

    def _build(self) -> None:
        self.bert = self._text_encoder("bert")
        hidden = self.bert.config.hidden_size
        self.classifier = RelationClassifier(2 * hidden, hidden, self.num_labels, self.config.dropout, False)

    @property
    def required_modalities(self) -> set[str]:
        return set()

    def encode(self, batch: MREBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], None]:
        h_text = self.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        x = entity_states(h_text, batch.head_pos, batch.tail_pos)
        logits, f_final = self.classifier(x)
        return logits, {"F_final": f_final}, None
