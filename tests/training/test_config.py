"""Run configs: presets, overrides, validation, grids, and that every preset builds (tiny encoders)."""

from __future__ import annotations

import pytest
from tests.factories import TINY_RESNET, resnet_folder

from camim.errors import CamimError
from camim.experiments.grids import grid_rows, load_grids
from camim.training.config import (
    RunConfig,
    config_from_dict,
    epoch_seed,
    list_presets,
    load_config,
    load_paper_results,
)
from camim.training.datamodule import EpochSeededSampler, bootstrap_indices
from camim.typed import parse_override

from .conftest import ISSUE18_BAD_SETTINGS

TABLE1 = [
    "bert",
    "hvpnet",
    "hvpnet-mi",
    "hvpnet-cam",
    "hvpnet-cam-mi",
    "tmr",
    "tmr-mi",
    "tmr-cam",
    "tmr-cam-mi",
]


def test_every_table1_row_and_offline_presets_exist():
    assert set(TABLE1) | {"offline-bert", "offline-tmr-cam-mi"} <= set(list_presets())


def test_paper_settings():
    tmr = load_config("tmr-cam-mi")
    assert (tmr.optim.batch_size, tmr.optim.lr, tmr.optim.epochs, tmr.optim.warmup_steps) == (
        16,
        2e-5,
        8,
        300,
    )
    assert tmr.optim.adam_bias_correction is False and tmr.optim.bootstrap_train is True
    model = tmr.model.to_dict()
    assert model == {**model, "name": "tmr", "cam": "both", "mi": True, "mi_alpha": 0.1}
    assert tmr.data.caption_source == "minicpm"
    hv = load_config("hvpnet-cam-mi")
    assert (hv.optim.batch_size, hv.optim.lr, hv.optim.epochs, hv.optim.eval_begin_epoch) == (32, 3e-5, 30, 8)
    assert hv.optim.warmup_ratio == 0.1 and hv.optim.warmup_steps is None
    assert load_config("tmr").model.cam == "none" and load_config("tmr").model.mi is False
    assert load_config("hvpnet-mi").model.mi is True and load_config("hvpnet-mi").model.cam == "none"


def test_overrides_are_typed_and_dotted():
    assert parse_override("optim.lr=3e-5") == (["optim", "lr"], 3e-5)
    assert parse_override("model.mi=false") == (["model", "mi"], False)
    assert parse_override("data.caption_source=null") == (["data", "caption_source"], None)
    cfg = load_config(
        "tmr-cam-mi", ["optim.lr=1e-5", "model.mi_pair=(O+G)&F", "trainer.devices=2", "model.mi_alpha=0.3"]
    )
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert cfg.model.mi_pair == "(O+G)&F" and cfg.model.mi_alpha == 0.3 and cfg.trainer.devices == 2
    # paper reading of the warmup: 10% instead of 300 fixed steps
    cfg = load_config("tmr", ["optim.warmup_steps=null", "optim.warmup_ratio=0.1"])
    assert cfg.optim.warmup_steps is None and cfg.optim.warmup_ratio == 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key"),
        (["optim.warmup_ratio=0.1"], "either optim.warmup_steps or optim.warmup_ratio"),
        (["optim.eval_begin_epoch=9"], "after the last epoch"),
        (["optim.lr=abc"], "expected a number"),
        (["data.on_missing=ignore"], "on_missing"),
        (["bogus=1"], "unknown top-level"),
        (["noequals"], "key=value"),
    ],
)
def test_bad_configs_are_clear_errors(overrides, message):
    with pytest.raises(CamimError, match=message):
        load_config("tmr", overrides)


def test_a_seed_is_refused_unless_every_epoch_seed_is_one_lightning_takes():
    """Lightning >= 2.5.3 raises a ValueError for a seed outside [0, 2**32 - 1] (`camim train` crashed with a
    traceback at the first batch; before 2.5.3 it seeded 0 instead): epoch e seeds with seed * 1000 + e."""
    from lightning.fabric.utilities.seed import max_seed_value

    cfg = load_config("tmr", ["optim.seed=4294967", "optim.epochs=296"])  # epoch 295: the largest seed
    assert epoch_seed(cfg.optim.seed, cfg.optim.epochs - 1) == max_seed_value
    for overrides, top in (
        (["optim.seed=4294967", "optim.epochs=297"], 4294966),
        (["optim.seed=-1"], 4294967),
    ):
        with pytest.raises(CamimError, match=rf"^optim\.seed must be in \[0, {top}\] with optim\.epochs"):
            load_config("tmr", overrides)


def test_a_finished_runs_config_with_a_seed_out_of_range_still_reads_but_does_not_train(tmp_path):
    """A run trained under Lightning 2.4 - 2.5.2 with ``optim.seed`` 5000000 finished (it seeded 0): its folder
    still evaluates, predicts and is compared (``load_run_config``), while training with it is refused."""
    from camim.training.config import load_run_config

    d = load_config("tmr").to_dict()
    d["optim"]["seed"] = 5_000_000
    (tmp_path / "config.yaml").write_text(yaml_dump(d))
    assert load_run_config(tmp_path / "config.yaml").optim.seed == 5_000_000
    with pytest.raises(CamimError, match=r"^optim\.seed must be in \[0, 4294967\] with optim\.epochs 8 "):
        load_config(tmp_path / "config.yaml")


def test_yaml_file_with_base_and_bad_yaml(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("base: tmr-cam-mi\nname: mine\noptim:\n  epochs: 2\n")
    cfg = load_config(good)
    assert cfg.name == "mine" and cfg.optim.epochs == 2 and cfg.model.cam == "both"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\noptim: [1,\n")
    with pytest.raises(CamimError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)
    with pytest.raises(CamimError, match="unknown preset"):
        load_config("no-such-preset")


def test_config_round_trips_through_yaml():
    import yaml

    cfg = load_config("hvpnet-cam-mi", ["optim.seed=3"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert isinstance(again, RunConfig) and again == cfg


def test_grids_have_paper_numbers():
    paper = load_paper_results()
    assert set(paper["table1"]) == set(TABLE1)
    assert [r["label"] for r in grid_rows("table1")] == TABLE1
    t2 = grid_rows("table2")
    assert len(t2) == 12 and all(r["paper"]["f1"] > 80 for r in t2)
    assert load_config(t2[0]["preset"], t2[0]["overrides"]).data.caption_source == "blip2"
    f4 = grid_rows("fig4")
    assert len(f4) == 4 + 3 + 4
    for r in f4:  # every override applies and validates
        load_config(r["preset"], r["overrides"])
    alpha = [r for r in f4 if r["label"] == "alpha:0.3"][0]
    assert load_config(alpha["preset"], alpha["overrides"]).model.mi_alpha == 0.3
    assert set(load_grids()) >= {"table1", "table2", "fig4"}


def test_bootstrap_matches_released_draw():
    idx = bootstrap_indices(12247, 666)
    assert len(idx) == 12247
    assert len(set(idx)) == 7793  # reference §7.3: python random seeded 666, nothing drawn first


def test_epoch_seeded_sampler_is_a_permutation_fixed_by_seed_and_epoch():
    s = EpochSeededSampler(10, seed=1)
    it = iter(s)  # drawn lazily: set_epoch after iter() still applies
    s.set_epoch(3)
    e3 = list(it)
    assert sorted(e3) == list(range(10))
    assert e3 == list(EpochSeededSampler(10, seed=1, epoch=3))
    assert e3 != list(EpochSeededSampler(10, seed=1, epoch=4))


@pytest.fixture(scope="module")
def tiny_encoders(tiny_mnre, tmp_path_factory):
    """A tiny offline BERT folder (own vocabulary) and a tiny transformers ResNet folder."""
    from camim.pretraining.offline import build_offline_encoder

    from .conftest import TINY

    root = tmp_path_factory.mktemp("enc")
    cfg = load_config("offline-bert", TINY)
    text = build_offline_encoder(cfg.offline, tiny_mnre, root / "bert")
    vision = resnet_folder(root / "resnet", weights=True, **{**TINY_RESNET, "hidden_sizes": [8, 8, 8, 16]})
    return text, vision


@pytest.mark.parametrize("preset", list_presets())  # read at collection: a new preset file is covered
def test_every_preset_builds_with_tiny_overrides(preset, tiny_encoders):
    from camim.models import build_model, registry

    text, vision = tiny_encoders
    tiny = [
        f"model.text_encoder={text}",
        "model.text_encoder_pretrained=false",
        f"model.vision_encoder={vision}",
        "model.vision_encoder_pretrained=false",
    ]
    cfg = load_config(preset, tiny)
    model = build_model(cfg.model, labels=["None", "a", "b"])
    assert type(model) is registry.model_class(cfg.model.name) and model.num_labels == 3
    assert model.config == cfg.model  # what the preset asks is what the model was built with
    assert model.required_modalities <= registry.capabilities(cfg.model.name).reads
    if cfg.data.caption_source is None:
        assert "caption" not in model.required_modalities


# ------------------------------------------------------------------ issue 18 §2: every setting typed


@pytest.mark.parametrize(
    "override, message",
    [
        *ISSUE18_BAD_SETTINGS,
        ("model.fidelity.sum_pooling=nah", "model.fidelity.sum_pooling: expected true or false, got 'nah'"),
        ("trainer.devices=al", "trainer.devices: expected an integer, a list of integers or 'auto'"),
        ("trainer.precision=bf16mixed", "trainer.precision: expected one of"),
        ("data.on_error=ignore", "data.on_error: expected one of 'raise', 'skip'"),
        ("offline.model_keys=[txt_encoder]", "offline.model_keys: 'txt_encoder' is not a model key"),
        ("offline.model_keys=[max_length]", "offline.model_keys: model.max_length takes an integer"),
        ("data.max_objects=2", "data.max_objects: moved to model.max_objects"),
    ],
)
def test_every_setting_is_typed_and_errors_name_the_dotted_key(override, message):
    with pytest.raises(CamimError) as err:
        load_config("offline-tmr-cam-mi", [override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_yaml_exponent_arrives_as_a_float_in_the_model(tmp_path):
    """YAML 1.1 reads `1e-1` as a string; the config reader reads numbers as YAML 1.2 does, and the loader
    takes number strings for float fields, so mi_alpha reaches the loss (Eq. 23) as 0.1."""
    path = tmp_path / "alpha.yaml"
    path.write_text(
        "base: tmr-cam-mi\nmodel:\n  mi_alpha: 1e-1\n  mi_temperature: '5e-1'\noptim:\n  lr: 3e-5\n"
    )
    cfg = load_config(path)
    assert cfg.model.mi_alpha == 0.1 and type(cfg.model.mi_alpha) is float
    assert cfg.model.mi_temperature == 0.5 and type(cfg.model.mi_temperature) is float
    assert cfg.optim.lr == 3e-5 and type(cfg.optim.lr) is float
    assert parse_override("model.mi_alpha=1e-1") == (["model", "mi_alpha"], 0.1)


def test_model_section_is_a_model_config_parsed_like_config_json():
    from camim.models import ModelConfig

    cfg = load_config("tmr-cam-mi", ["model.max_objects=2", "model.mi=no"])
    assert isinstance(cfg.model, ModelConfig) and cfg.model.max_objects == 2 and cfg.model.mi is False
    assert "max_objects" not in cfg.to_dict()["data"]  # one owner: the model (the data layer reads it there)
    same = ModelConfig.from_dict({**cfg.model.to_dict(), "labels": ["None"], "format": 1})  # config.json
    assert same == cfg.model
    with pytest.raises(CamimError, match=r"^model\.mi_alpha: expected a number, got 'abc'"):
        ModelConfig.from_dict({"name": "tmr", "mi_alpha": "abc"})
    with pytest.raises(CamimError, match=r"^model\.fidelity\.sum_pooling: expected true or false"):
        ModelConfig.from_dict({"name": "tmr", "fidelity": {"sum_pooling": "flase"}})


def test_the_data_layer_loads_the_models_max_objects(tiny_mnre):
    from camim.data import default_labels
    from camim.training.datamodule import MNREDataModule

    cfg = load_config("tmr", ["model.max_objects=1"])
    dm = MNREDataModule(cfg, str(tiny_mnre), default_labels(tiny_mnre), (), collate_fn=list)
    assert dm.dataset("train").max_objects == 1


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_round_trips_through_its_resolved_yaml(preset, tmp_path):
    """config.yaml is the fully resolved config: every default is written out and it reloads equal."""
    import yaml

    from camim.typed import flatten

    cfg = load_config(preset)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    written = flatten(yaml.safe_load(path.read_text()))
    assert set(written) == set(flatten(RunConfig().to_dict()))  # every setting, the model's included
    assert load_config(path) == cfg


def test_an_old_run_config_with_data_max_objects_still_reads(tmp_path):
    from camim.training.config import load_run_config

    d = load_config("tmr").to_dict()
    d["data"]["max_objects"] = 3
    del d["model"]["max_objects"]
    (tmp_path / "config.yaml").write_text(yaml_dump(d))
    assert load_run_config(tmp_path / "config.yaml") == load_config("tmr")
    d["data"]["max_objects"] = 2  # disagrees with the model: say which file and key
    (tmp_path / "config.yaml").write_text(yaml_dump(d))
    with pytest.raises(CamimError, match=r"config.yaml: data.max_objects: moved to model.max_objects"):
        load_run_config(tmp_path / "config.yaml")


def yaml_dump(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
