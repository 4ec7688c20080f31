"""The Lightning run: module and datamodule, MNRE metrics (torchmetrics), dev selection with the released tie
rules, typed run configs with YAML presets, experiment trackers; ``camim train`` and ``camim evaluate``.

Entry points: :func:`camim.training.api.train_run`, :func:`camim.training.api.evaluate_run`,
:func:`camim.training.config.load_config`. The run folder it writes is :mod:`camim.runs`'s; grids and case
analyses of finished runs are in :mod:`camim.experiments`, encoder pretraining in :mod:`camim.pretraining`.
See docs/training.md.
"""
