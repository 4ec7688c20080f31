"""Correlation scores: the uniform default, the tiny ViLT ITM estimator, the four released files, resuming."""

from __future__ import annotations

import math

import pytest
from tests.preprocess.conftest import SAMPLES, CallCounter, draw

from camim.data.auxiliary import read_score_file, read_score_table
from camim.data.images import load_image
from camim.data.layout import DataLayout
from camim.data.types import Scores
from camim.errors import CamimError, DataError
from camim.preprocess.scores import (
    ScoreConfig,
    ScoreEstimator,
    estimate_scores,
    prepare_scores,
    uniform_scores,
)

FILES = ("train_weight_strong", "train_weight_weak", "dif_train_weight_strong", "dif_train_weight_weak")


def _lines(path):
    return [line.rstrip("\n").split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def test_uniform_default_writes_the_four_released_files(data_dir):
    report = prepare_scores(data_dir, "train", None, progress=False)
    assert report.processed == 3
    for name in FILES:
        rows = _lines(data_dir / "txt" / f"{name}.txt")
        assert [r[0] for r in rows] == [s["img_id"] for s in SAMPLES]  # one line per sample, sample order
        assert all(float(r[1]) == 0.5 for r in rows)
    layout = DataLayout()
    paths = {
        k: layout.path(data_dir, getattr(layout, k), "train")
        for k in ("weak_ori", "strong_ori", "weak_dif", "strong_dif")
    }
    scores, complete = read_score_table(paths).lookup("b.png")
    assert complete and scores == uniform_scores() == Scores(0.5, 0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def estimator(vilt_dir) -> ScoreEstimator:
    return ScoreEstimator.from_pretrained(ScoreConfig(model=str(vilt_dir), device="cpu"))


def test_itm_probability_maps_to_strong_and_weak(estimator):
    image, text = draw(0), "the dog at the walk of fame"
    p = estimator.probability(image, text)
    assert 0.0 < p < 1.0
    strong, weak = estimator(image, text)
    assert strong == pytest.approx(p, abs=1e-7) and strong + weak == 1.0
    # p = sigmoid((logit - bias) / temperature): recover the logit and check the bias/temperature mapping
    logit = math.log(p / (1 - p))
    shifted = ScoreEstimator(
        estimator.model, estimator.processor, ScoreConfig(bias=logit + 2.0, temperature=0.5)
    )
    assert shifted.probability(image, text) == pytest.approx(1 / (1 + math.exp(4.0)), rel=1e-4)
    # the text is truncated to ViLT's positions instead of failing
    assert 0.0 < estimator.probability(image, "word " * 200) < 1.0

    s = estimate_scores(image, text, generated_image=None, estimator=estimator)
    assert s.strong_ori == pytest.approx(p) and s.weak_ori == pytest.approx(1 - p)
    assert (s.strong_dif, s.weak_dif) == (0.5, 0.5)  # no generated image: uniform pair
    assert estimate_scores(None, text) == uniform_scores()  # nothing to score: no model needed


def test_non_vilt_model_is_a_clear_error(owlvit_dir):
    with pytest.raises(CamimError, match="ViLT"):
        ScoreEstimator.from_pretrained(ScoreConfig(model=str(owlvit_dir)))
    with pytest.raises(CamimError, match="cannot load"):
        ScoreEstimator.from_pretrained(ScoreConfig(model="/nonexistent/folder"))


def test_a_score_model_load_failure_with_an_empty_message_is_a_one_line_error(monkeypatch):
    from transformers import AutoConfig

    def fail(*args, **kwargs):
        raise ValueError("")

    monkeypatch.setattr(AutoConfig, "from_pretrained", fail)
    with pytest.raises(CamimError) as err:
        ScoreEstimator.from_pretrained(ScoreConfig(model="some/vilt", device="cpu"))
    assert str(err.value) == "cannot load score model 'some/vilt': ValueError"


def test_prepare_scores_with_itm_writes_per_sample_values_and_resumes(data_dir, estimator):
    report = prepare_scores(data_dir, "train", estimator, progress=False)
    assert report.processed == 3
    txt = data_dir / "txt"
    strong = _lines(txt / "train_weight_strong.txt")
    weak = _lines(txt / "train_weight_weak.txt")
    strong_dif = _lines(txt / "dif_train_weight_strong.txt")
    for k, sample in enumerate(SAMPLES):
        text = " ".join(sample["token"])
        ori = load_image(data_dir / "img_org" / "train" / sample["img_id"])
        dif = load_image(data_dir / "diffusion_pic" / "train" / sample["img_id"])
        assert float(strong[k][1]) == pytest.approx(estimator.probability(ori, text), abs=1e-6)
        assert float(strong[k][1]) + float(weak[k][1]) == pytest.approx(1.0, abs=1e-7)
        assert float(strong_dif[k][1]) == pytest.approx(estimator.probability(dif, text), abs=1e-6)
    # the data layer reads them back (last line per img_id wins, as released)
    assert read_score_file(txt / "train_weight_strong.txt")["a.jpg"] == float(strong[1][1])

    estimator.model = counter = CallCounter(estimator.model)
    try:
        again = prepare_scores(data_dir, "train", estimator, progress=False)
        assert counter.calls == 0 and again.skipped_done == 3
        assert _lines(txt / "train_weight_strong.txt") == strong
    finally:
        estimator.model = counter.inner


def test_missing_generated_image_raises_or_falls_back_counted(data_dir, estimator):
    (data_dir / "diffusion_pic" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        prepare_scores(data_dir, "train", estimator, progress=False)
    report = prepare_scores(data_dir, "train", estimator, on_missing="fallback", progress=False)
    assert report.fallbacks == {"missing_generated_image": 1}
    rows = _lines(data_dir / "txt" / "dif_train_weight_strong.txt")
    assert float(rows[2][1]) == 0.5 and float(rows[0][1]) != 0.5
    # the fallback sample is retried next time; the others are done
    draw(9, (32, 32)).save(data_dir / "diffusion_pic" / "train" / "b.png")
    again = prepare_scores(data_dir, "train", estimator, progress=False)
    assert (again.processed, again.skipped_done) == (1, 2)
