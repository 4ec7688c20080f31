"""Training and evaluation: Lightning module/datamodule, MNRE metrics (torchmetrics), the paper's optimiser
and schedule, typed run configs with YAML presets, multi-seed experiments and the paper's grids.

Entry points: :func:`camim.training.api.train_run`, :func:`camim.training.api.evaluate_run`,
:func:`camim.training.config.load_config`; commands ``camim train``, ``camim evaluate``, ``camim experiment``.
See docs/training.md.
"""
