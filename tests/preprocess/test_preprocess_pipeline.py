"""New data end to end: translate -> objects -> scores, then MNREDataset loads every visual modality."""

from __future__ import annotations

import pytest
from PIL import Image
from tests.preprocess.conftest import SAMPLES, write_data_dir

from camim.data import MNREDataset
from camim.errors import DataError
from camim.preprocess import (
    DetectorConfig,
    ObjectDetector,
    ScoreConfig,
    ScoreEstimator,
    TranslationConfig,
    TranslationGenerator,
    prepare_objects,
    prepare_scores,
    prepare_translations,
)

VISUAL = ("image", "objects", "generated_image", "generated_objects", "scores", "phrase")


def test_new_data_gets_every_visual_modality(tmp_path, owlvit_dir, sd_dir, vilt_dir):
    data_dir = write_data_dir(tmp_path / "data", generated=False)
    with pytest.raises(DataError):  # nothing prepared yet
        MNREDataset(data_dir, "train", caption_source=None, modalities=VISUAL)[0]

    generator = TranslationGenerator.from_pretrained(
        TranslationConfig(model=str(sd_dir), num_inference_steps=2, device="cpu")
    )
    prepare_translations(data_dir, "train", generator, progress=False)
    detector = ObjectDetector.from_pretrained(
        DetectorConfig(model=str(owlvit_dir), threshold=0.0, device="cpu")
    )
    prepare_objects(data_dir, "train", detector, progress=False)
    estimator = ScoreEstimator.from_pretrained(ScoreConfig(model=str(vilt_dir), device="cpu"))
    prepare_scores(data_dir, "train", estimator, progress=False)

    ds = MNREDataset(data_dir, "train", caption_source=None, modalities=VISUAL)  # on_missing="raise"
    assert len(ds) == len(SAMPLES)
    for i in range(len(ds)):
        ex = ds[i]
        assert isinstance(ex.image, Image.Image) and ex.generated_image.size == (32, 32)
        assert 1 <= len(ex.objects) <= 3 and 1 <= len(ex.generated_objects) <= 3
        assert all(isinstance(o, Image.Image) for o in ex.objects + ex.generated_objects)
        assert ex.scores.strong_ori + ex.scores.weak_ori == pytest.approx(1.0)
        assert 0 < ex.scores.strong_dif < 1 and ex.phrase
    assert not ds.report or all(v == 0 for v in ds.report.values())  # no fallback was needed
