"""Object grounding: box selection, queries, the tiny OWL detectors, the written dictionaries and resuming."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tests.preprocess.conftest import SAMPLES, CallCounter, draw, read_json

from camim.data.auxiliary import read_box_dict, read_object_dict, read_phrases
from camim.data.samples import read_samples
from camim.errors import CamimError, DataError
from camim.preprocess.objects import (
    DetectorConfig,
    ObjectDetector,
    box_iou,
    build_queries,
    detect_objects,
    prepare_objects,
    released_phrase,
    select_boxes,
)


def test_select_boxes_clips_drops_tiny_suppresses_overlaps_and_keeps_best_m():
    boxes = [
        [-10, -5, 30, 20],  # clipped to (0, 0, 30, 20)
        [1, 1, 29, 21],  # overlaps the first (IoU > 0.5), lower score -> suppressed
        [40, 5, 40.5, 30],  # 0.5 px wide -> dropped
        [35, 10, 60, 45],
        [10, 25, 30, 45],
        [50, 0, 64, 10],
    ]
    scores = [0.9, 0.8, 0.99, 0.7, 0.6, 0.5]
    labels = ["a", "b", "c", "d", "e", "f"]
    kept = select_boxes(boxes, scores, labels, width=64, height=48, max_objects=3, nms_iou=0.5)
    assert [d.label for d in kept] == ["a", "d", "e"]
    assert kept[0].box == (0.0, 0.0, 30.0, 20.0)
    assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)
    assert select_boxes(boxes, scores, labels, 64, 48, max_objects=1)[0].label == "a"
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_queries_and_released_phrases(tmp_path):
    records = [*SAMPLES, dict(SAMPLES[0], h={"name": "RT @Mr_Valoyi", "pos": [0, 1]})]
    (tmp_path / "s.txt").write_text("\n".join(repr(r) for r in records) + "\n", encoding="utf-8")
    ex, *_, rt = read_samples(tmp_path / "s.txt")
    assert build_queries(ex) == ["Bill Cosby", "Hollywood Walk of Fame"]
    assert build_queries(ex, "Bill Cosby Hollywood Walk of Fame person") == [
        "Bill Cosby",
        "Hollywood Walk of Fame",
        "Bill Cosby Hollywood Walk of Fame person",
    ]
    assert build_queries(ex, "bill cosby") == ["Bill Cosby", "Hollywood Walk of Fame"]
    # the released phrase files drop "RT" and "@" substrings only; clean=True tidies the names
    assert released_phrase(rt) == "Mr_Valoyi Hollywood Walk of Fame"
    assert released_phrase(rt, clean=True) == "Mr Valoyi Hollywood Walk of Fame"


@pytest.fixture(scope="module")
def detector(owlvit_dir) -> ObjectDetector:
    return ObjectDetector.from_pretrained(DetectorConfig(model=str(owlvit_dir), threshold=0.0, device="cpu"))


def test_detect_objects_returns_m_ranked_boxes_inside_the_image(detector):
    image = draw(1)
    dets = detect_objects(image, ["Bill Cosby", "a red box"], detector=detector)
    assert 1 <= len(dets) <= 3
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in dets:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
        assert d.label in ("Bill Cosby", "a red box")
    for i, a in enumerate(dets):
        assert all(box_iou(a.box, b.box) <= 0.5 for b in dets[i + 1 :])
    assert [d.box for d in detector.detect(image, ["Bill Cosby", "a red box"])] == [d.box for d in dets]
    # a threshold above every score keeps nothing
    strict = ObjectDetector(detector.model, detector.processor, DetectorConfig(threshold=1.0))
    assert strict.detect(image, ["Bill Cosby"]) == []
    # the Predictor's object_finder call: crops, default queries when none are given
    crops = detector(image)
    assert crops and all(isinstance(c, Image.Image) for c in crops)


def test_owlv2_detector_loads_and_detects(owlv2_dir):
    det = ObjectDetector.from_pretrained(DetectorConfig(model=str(owlv2_dir), threshold=0.0, device="cpu"))
    assert det.model_type == "owlv2"
    image = draw(2, (80, 40))  # non-square: OWLv2 pads to a square, boxes must still be in image pixels
    dets = det.detect(image, ["a person"])
    assert dets and all(0 <= d.box[0] < d.box[2] <= 80 and 0 <= d.box[1] < d.box[3] <= 40 for d in dets)


def test_grounding_dino_detector_loads_and_detects(grounding_dino_dir):
    cfg = DetectorConfig(model=str(grounding_dino_dir), threshold=0.0, text_threshold=0.0, device="cpu")
    det = ObjectDetector.from_pretrained(cfg)
    assert det.model_type == "grounding-dino"
    image = draw(4)
    dets = det.detect(image, ["Bill Cosby", "Walk. of Fame"])  # a dot inside a query must not split it
    assert 1 <= len(dets) <= 3
    assert all(0 <= d.box[0] < d.box[2] <= 64 and 0 <= d.box[1] < d.box[3] <= 48 for d in dets)
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)


def test_unsupported_detector_is_a_clear_error(vilt_dir):
    with pytest.raises(CamimError, match="zero-shot|cannot load|supported"):
        ObjectDetector.from_pretrained(DetectorConfig(model=str(vilt_dir)))


def test_a_detector_load_failure_with_an_empty_message_is_a_one_line_error(monkeypatch):
    from transformers import AutoProcessor

    def fail(*args, **kwargs):
        raise OSError()

    monkeypatch.setattr(AutoProcessor, "from_pretrained", fail)
    with pytest.raises(CamimError) as err:
        ObjectDetector.from_pretrained(DetectorConfig(model="some/detector", device="cpu"))
    assert str(err.value) == "cannot load detector 'some/detector': OSError"


def test_prepare_objects_writes_released_layout_and_resumes(data_dir, detector):
    reports = prepare_objects(data_dir, "train", detector, progress=False)
    assert [r.step for r in reports] == ["objects", "generated_objects"]
    assert all(r.processed == 3 and r.skipped_done == 0 for r in reports)

    crops = read_object_dict(data_dir / "txt" / "mre_train_dict.json")
    assert sorted(crops) == [0, 1, 2]
    crops_dir = data_dir / "img_vg" / "train" / "crops"
    log = [
        json.loads(line) for line in (data_dir / "progress" / "objects_train.jsonl").read_text().splitlines()
    ]
    for idx, names in crops.items():
        assert 1 <= len(names) <= 3
        assert names == [f"{idx}_pred_crop_{n}.png" for n in range(len(names))]
        rec = next(r for r in log if r["key"] == str(idx))
        for name, box in zip(names, rec["boxes"]):
            with Image.open(crops_dir / name) as im:  # the crop encloses the box
                assert 0 <= im.width - (box[2] - box[0]) <= 2 and 0 <= im.height - (box[3] - box[1]) <= 2

    boxes = read_box_dict(data_dir / "txt" / "mre_dif_train_dict.json")
    assert sorted(boxes) == [0, 1, 2]
    for bs in boxes.values():  # generated images are 32 x 32
        assert 1 <= len(bs) <= 3 and all(0 <= b[0] < b[2] <= 32 and 0 <= b[1] < b[3] <= 32 for b in bs)

    phrases = read_phrases(data_dir / "txt" / "phrase_text_train.json")
    assert phrases[0] == "Bill_Cosby Hollywood Walk of Fame"  # released style: "@" and "RT" removed only

    # rerun: nothing is detected again
    detector.model = counter = CallCounter(detector.model)
    try:
        again = prepare_objects(data_dir, "train", detector, progress=False)
        assert counter.calls == 0
        assert all(r.skipped_done == 3 and r.processed == 0 for r in again)
        assert read_object_dict(data_dir / "txt" / "mre_train_dict.json") == crops
        # a lost crop is redone, only for its sample
        (crops_dir / crops[2][0]).unlink()
        prepare_objects(data_dir, "train", detector, images=("original",), progress=False)
        assert counter.calls == 1 and (crops_dir / crops[2][0]).is_file()
        # other settings: everything is redone
        detector.config = DetectorConfig(model=detector.config.model, threshold=0.0, max_objects=2)
        prepare_objects(data_dir, "train", detector, images=("generated",), progress=False)
        assert counter.calls == 4
        assert all(len(b) <= 2 for b in read_box_dict(data_dir / "txt" / "mre_dif_train_dict.json").values())
    finally:
        detector.model = counter.inner
        detector.config = DetectorConfig(model=detector.config.model, threshold=0.0)


def test_prepare_objects_dataset_reads_the_outputs(data_dir, detector):
    data = pytest.importorskip("camim.data")
    if not hasattr(data, "MNREDataset"):
        pytest.skip("camim.data.MNREDataset not available yet")
    prepare_objects(data_dir, "train", detector, progress=False)
    ds = data.MNREDataset(
        data_dir, split="train", caption_source=None, modalities=("objects", "generated_objects", "phrase")
    )
    ex = ds[0]
    names = read_object_dict(data_dir / "txt" / "mre_train_dict.json")[0]
    assert len(ex.objects) == min(3, len(names)) and all(isinstance(o, Image.Image) for o in ex.objects)
    assert ex.generated_objects is not None and ex.phrase


def test_missing_image_raises_or_falls_back_counted(data_dir, detector):
    (data_dir / "img_org" / "train" / "b.png").unlink()
    with pytest.raises(DataError, match="b.png"):
        prepare_objects(data_dir, "train", detector, images=("original",), progress=False)
    (report,) = prepare_objects(
        data_dir, "train", detector, images=("original",), on_missing="fallback", progress=False
    )
    assert report.fallbacks["missing_image"] == 1
    assert read_json(data_dir / "txt" / "mre_train_dict.json")["2"] == []
    # the fallback is not recorded as done: once the image is back, only that sample is detected
    draw(3).save(data_dir / "img_org" / "train" / "b.png")
    (again,) = prepare_objects(data_dir, "train", detector, images=("original",), progress=False)
    assert again.processed == 1 and again.skipped_done == 2
    assert read_object_dict(data_dir / "txt" / "mre_train_dict.json")[2]


def test_a_changed_sample_is_redone_and_missing_generated_images_say_what_to_run(data_dir, detector):
    prepare_objects(data_dir, "train", detector, images=("original",), progress=False)
    records = [dict(r) for r in SAMPLES]
    records[1] = dict(records[1], t={"name": "Hollywood", "pos": [6, 7]})
    (data_dir / "txt" / "ours_train.txt").write_text(
        "\n".join(repr(r) for r in records) + "\n", encoding="utf-8"
    )
    (data_dir / "txt" / "phrase_text_train.json").unlink()  # rewritten from the new samples
    (report,) = prepare_objects(data_dir, "train", detector, images=("original",), progress=False)
    assert (report.processed, report.skipped_done) == (1, 2)

    for p in (data_dir / "diffusion_pic" / "train").iterdir():
        p.unlink()
    (data_dir / "diffusion_pic" / "train").rmdir()
    with pytest.raises(DataError, match="camim prepare translate"):
        prepare_objects(data_dir, "train", detector, images=("generated",), progress=False)
