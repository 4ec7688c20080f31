"""The extractors by name: the one mapping (``model.name`` -> class) that :func:`camim.models.build_model`,
:meth:`MREModel.from_pretrained <camim.models.base.MREModel.from_pretrained>`, ``ModelConfig``'s check and
their error messages read, and through which every other module learns what an extractor can do
(:func:`capabilities`: the class's own declaration, never its name).

Adding an extractor is one line here plus its module: a subclass of ``MREModel`` with ``model_name``,
``summary`` (the model card's line) and ``capabilities`` (what it reads; CAM, MI). The generic tests
(``tests/models/test_extractors.py``, the typed-config properties) are parametrised by :func:`model_names`,
so they cover it without an edit (docs/models.md, "Adding an extractor").

A class is imported when it is first asked for (as transformers' auto classes do), so importing
``camim.models`` stays light and the extractor modules, which import :mod:`camim.models.base`, are not
imported by it.
"""

from __future__ import annotations

import importlib

from camim.errors import CamimError
from camim.models.capabilities import Capabilities

#: model.name -> "module.Class"
EXTRACTORS: dict[str, str] = {
    "bert": "camim.models.bert_re.BertRE",  # the text-only baseline
    "tmr": "camim.models.tmr.TMR",
    "hvpnet": "camim.models.hvpnet.HVPNeT",
}
#: class name -> model.name (``from camim.models import TMR``)
CLASS_NAMES = {path.rpartition(".")[2]: name for name, path in EXTRACTORS.items()}


def model_names() -> tuple[str, ...]:
    """The extractor names, in the registry's order."""
    return tuple(EXTRACTORS)


def names_text() -> str:
    """``bert, tmr or hvpnet``: the names as an error message lists them."""
    names = model_names()
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def model_class(name: str) -> type:
    """The extractor class of ``name``; a one-line error naming the choices for an unknown one."""
    if name not in EXTRACTORS:
        raise CamimError(f"unknown model name {name!r}; expected {names_text()}")
    module, _, cls = EXTRACTORS[name].rpartition(".")
    return getattr(importlib.import_module(module), cls)


def capabilities(name: str) -> Capabilities:
    """What the extractor ``name`` reads and supports (its class's ``capabilities``)."""
    return model_class(name).capabilities
