from pathlib import Path

import pytest

from emunet.config import ConfigError, dump_config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["isbi-lab.yaml", "isbi-cpu.yaml"])
def test_shipped_presets_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.data.fold == 1 and cfg.train.steps > 0


def test_lab_preset_has_the_labs_hyper_parameters():
    cfg = load_config(CONFIGS / "isbi-lab.yaml")
    t = cfg.train
    assert (cfg.model.preset, t.batch_size, t.steps, t.lr, t.weight_decay, t.seed, t.loss_scale) == (
        "unet_medical", 16, 600, 1e-4, 5e-4, 1, 1024.0)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-3", "model.width=8", "train.channels_last=false", "data.test_images=null"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.model.width == 8 and cfg.train.channels_last is False and cfg.data.test_images is None


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.steps=7", "out_dir=somewhere"])
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.stepz=3", "unknown setting 'train.stepz'"),
        ("train.steps=many", "train.steps: expected int"),
        ("train.steps=0", "train.steps must be at least 1"),
        ("train.precision=fp8", "precision"),
        ("train.lr=.inf", "train.lr must be a positive number"),
        ("steps", "not of the form"),
        ("train=3", "train: expected a mapping"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_config_cannot_name_python_objects(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.yaml").write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        load_config(tmp_path / "evil.yaml")
    assert not marker.exists()


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
