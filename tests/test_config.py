import pytest

from mmr1.config import ConfigError, describe, load_config


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  lr: 1.0e-4\n  batch_size: 4\nmodel:\n  lora:\n    enabled: true\n")
    cfg = load_config(f, ["trainer.lr=1e-5", "model.path=/ckpt", "data.image_root=null", "model.lora.r=8"])
    assert cfg.trainer.lr == 1e-5  # the override wins over the file
    assert cfg.trainer.batch_size == 4
    assert cfg.model.path == "/ckpt"
    assert cfg.data.image_root is None
    assert cfg.model.lora.enabled and cfg.model.lora.r == 8
    assert cfg.rollout.group_size == 8  # untouched default


@pytest.mark.parametrize("override, message", [
    ("trainer.lrr=1", "unknown key 'trainer.lrr'; did you mean 'trainer.lr'?"),
    ("trainr.lr=1", "unknown key 'trainr'"),
    ("trainer.lr=abc", "trainer.lr: expected float, got 'abc'"),
    ("trainer.batch_size=0", "trainer.batch_size: 0 is out of range; allowed [1, inf]"),
    ("trainer.batch_size=2.5", "trainer.batch_size: expected int, got 2.5"),
    ("model.dtype=fp8", "model.dtype: 'fp8' is not allowed; choose one of 'float32', 'bfloat16', 'float16'"),
    ("rollout.top_p=1.5", "rollout.top_p: 1.5 is out of range; allowed [0.0, 1.0]"),
    ("model.freeze_vision=maybe", "model.freeze_vision: expected bool"),
    ("trainer=3", "trainer: expected a mapping of TrainerConfig keys"),
    ("trainer.lr", "must look like key.sub=value"),
])
def test_errors_name_the_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)


def test_every_key_is_documented():
    rows = describe()
    assert len(rows) > 40
    undocumented = [k for k, _, _, h in rows if not h]
    assert undocumented == []
