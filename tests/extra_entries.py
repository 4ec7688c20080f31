"""A pytest plugin (``pytest -p tests.extra_entries``) that adds an extractor and a preset folder before the
tests are collected, as a contributor's new files would: what a child pytest run of the generic tests with it
collects and passes is what they cover without an edit (tests/models/test_capabilities.py).

- ``CAMIM_TEST_EXTRACTOR=name=module.Class``: registered in ``camim.models.registry.EXTRACTORS``;
- ``CAMIM_TEST_PRESET_DIR=folder``: used as the packaged preset folder (``list_presets`` and ``base:``).
"""

from __future__ import annotations

import os
from pathlib import Path


def pytest_configure(config) -> None:
    import camim.training.config as run_config
    from camim.models import registry

    extractor = os.environ.get("CAMIM_TEST_EXTRACTOR")
    if extractor:
        name, _, path = extractor.partition("=")
        registry.EXTRACTORS[name] = path
    presets = os.environ.get("CAMIM_TEST_PRESET_DIR")
    if presets:
        run_config.PRESET_DIR = Path(presets)
