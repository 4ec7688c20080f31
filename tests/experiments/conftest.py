"""The training tests' tiny MNRE folder and encoders, shared (runs are trained to be analysed or started from)."""

from tests.training.conftest import text_dir, tiny_mnre, vision_dir  # noqa: F401 - fixtures re-exported
