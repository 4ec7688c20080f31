"""``bert-cls``: a fourth extractor written as a contributor would (docs/models.md, "Adding an extractor"),
for the tests that register one: the ``bert`` model with the [CLS] vector as the relation representation.

Not registered by default: a test registers it (``registry.EXTRACTORS[NAME] = PATH``, or the
``tests.extra_entries`` plugin in a child pytest)."""

from __future__ import annotations

import torch

from camim.models.batch import MREBatch
from camim.models.bert_re import BertRE
from camim.models.capabilities import Capabilities
from camim.models.classifier import RelationClassifier

NAME = "bert-cls"
PATH = "tests.models.bert_cls.BertCLS"


class BertCLS(BertRE):
    """Text-only: rep = Linear(d -> d)(h at [CLS]); logits = fc(Dropout(rep))."""

    model_name = NAME
    summary = "BERT with the [CLS] vector as the relation representation (text only)"
    capabilities = Capabilities()

    def _build(self) -> None:
        self.bert = self._text_encoder("bert")
        hidden = self.bert.config.hidden_size
        self.classifier = RelationClassifier(hidden, hidden, self.num_labels, self.config.dropout, False)

    def encode(self, batch: MREBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], None]:
        h_text = self.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        logits, f_final = self.classifier(h_text[:, 0])
        return logits, {"F_final": f_final}, None
