"""Visual preprocessing for new data: object grounding, translation images and correlation scores.

Each step has a single-example API (for the Predictor) and a resumable whole-split function behind
``camim prepare objects|translate|scores`` (see docs/preprocess.md). Models load lazily; diffusers is only
needed for translation images.
"""

from camim.preprocess.objects import (
    Detection,
    DetectorConfig,
    ObjectDetector,
    build_queries,
    crop_objects,
    detect_objects,
    prepare_objects,
)
from camim.preprocess.scores import (
    ScoreConfig,
    ScoreEstimator,
    estimate_scores,
    prepare_scores,
    uniform_scores,
)
from camim.preprocess.translation import (
    TranslationConfig,
    TranslationGenerator,
    generate_translation,
    image_seed,
    prepare_translations,
)

__all__ = [
    "Detection",
    "DetectorConfig",
    "ObjectDetector",
    "ScoreConfig",
    "ScoreEstimator",
    "TranslationConfig",
    "TranslationGenerator",
    "build_queries",
    "crop_objects",
    "detect_objects",
    "estimate_scores",
    "generate_translation",
    "image_seed",
    "prepare_objects",
    "prepare_scores",
    "prepare_translations",
    "uniform_scores",
]
