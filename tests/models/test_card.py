"""The model card README.md that save_pretrained writes (Hugging Face format: YAML front matter + markdown)."""

from __future__ import annotations

import pytest
from tests.models.conftest import LABELS, tiny_config

from camim.models import build_model
from camim.models.card import CardRun, model_card, paper_row, read_front_matter
from camim.training.config import load_config, load_paper_results


def test_save_pretrained_writes_a_card_without_run_information(text_dir, vision_dir, tmp_path):
    model = build_model(tiny_config(text_dir, vision_dir, name="tmr", cam="both", mi=True), LABELS)
    model.save_pretrained(tmp_path / "m")
    text = (tmp_path / "m" / "README.md").read_text()
    meta = read_front_matter(text)
    assert meta["library_name"] == "camim" and meta["datasets"] == ["mnre"]
    assert {"relation-extraction", "tmr", "caption-aware", "mutual-information"} <= set(meta["tags"])
    assert meta["metrics"] == ["accuracy", "precision", "recall", "f1"]
    assert "model-index" not in meta  # no scores to report
    assert "No evaluation was recorded" in text
    # the labels, with MNRE's descriptions (package data), in id order
    assert "| 1 | `/per/per/peer` | the two persons are peers" in text
    assert text.index("`None`") < text.index("`/per/per/peer`") < text.index("`/misc/misc/part_of`")
    # modalities TMR + CAM reads
    for m in ("`caption`", "`image`", "`objects`", "`generated_image`", "`scores`", "`phrase`"):
        assert m in text
    assert f'Predictor.from_pretrained("{tmp_path / "m"}")' in text
    assert '    image="post.jpg",' in text and "    caption=None," in text  # the inputs it reads
    assert "mi_pair: O&G" in text  # the model configuration block


def test_other_datasets_labels_are_listed_bare(text_dir, vision_dir):
    labels = ["no_relation", "founded_by", "works_for"]
    text = model_card({"name": "bert"}, labels, set())
    assert "| 1 | `founded_by` |  |" in text and "the model reads text only" in text
    assert "image=" not in text and "caption=" not in text  # a text-only model's usage


def test_a_run_adds_metrics_config_and_the_papers_row():
    cfg = load_config("tmr-cam-mi").to_dict()
    run = CardRun(
        cfg,
        {"test": {"accuracy": 95.1, "precision": 90.123, "recall": 88.0, "f1": 89.05}, "val": {"f1": 88.5}},
        paper_row(cfg, load_paper_results()),
    )
    text = model_card(cfg["model"], LABELS, {"caption"}, run, model_id="me/tmr-cam-mi")
    meta = read_front_matter(text)
    (entry,) = meta["model-index"]
    assert entry["name"] == "tmr-cam-mi"
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics == {"accuracy": 95.1, "precision": 90.12, "recall": 88.0, "f1": 89.05}
    assert entry["results"][0]["dataset"] == {"type": "mnre", "name": "MNRE", "split": "test"}
    assert "| this model, test | 95.10 | 90.12 | 88.00 | 89.05 |" in text
    # the paper's numbers for this preset with MiniCPM captions (Table 2 = Table 1 row "TMR + CAM + MI")
    assert (
        "| paper (Table 2: tmr-cam-mi with MiniCPM V2.5 captions) | 95.79 | 91.73 | 90.16 | 90.94 |" in text
    )
    assert 'Predictor.from_pretrained("me/tmr-cam-mi")' in text
    assert "camim predict --model me/tmr-cam-mi" in text
    assert "Preset `tmr-cam-mi` (paper row: TMR + CAM + MI)" in text and "warmup_steps: 300" in text


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("tmr-cam-mi", [], ("Table 2", "tmr-cam-mi with MiniCPM V2.5 captions", 90.94)),
        (
            "tmr-cam-mi",
            ["data.caption_source=cogvlm"],
            ("Table 2", "tmr-cam-mi with CogVLM2 captions", 90.39),
        ),
        # the data layer's "caption" source is QWenVL-Plus
        (
            "hvpnet-cam-mi",
            ["data.caption_source=caption"],
            ("Table 2", "hvpnet-cam-mi with QWenVL-Plus captions", 84.66),
        ),
        ("tmr", [], ("Table 1", "TMR (2023)", 89.05)),
        ("bert", [], ("Table 1", "BERT (2019)", 59.40)),
        ("offline-tmr-cam-mi", [], None),
    ],
)
def test_paper_row_lookup(preset, overrides, expected):
    row = paper_row(load_config(preset, overrides).to_dict(), load_paper_results())
    if expected is None:
        assert row is None
    else:
        assert (row["source"], row["row"], row["f1"]) == expected
