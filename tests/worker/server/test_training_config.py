"""The job config the worker builds: a shipped preset plus allowed, typed keys; never a path."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from training.train_config import AMP_MODES, SAMPLINGS, SECTIONS, config_from_dict
from worker.client.protocol import ProtocolError
from worker.server.training_config import (
    ALLOWED,
    PATH_KEYS,
    build_job_config,
    check_overrides,
    preset_path,
    presets,
    read_uploaded_config,
)


def test_every_allowed_key_is_a_config_key_of_the_same_type():
    for section, rules in ALLOWED.items():
        hints = typing.get_type_hints(SECTIONS[section])
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key, rule in rules.items():
            assert key in names, f"{section}.{key}"
            if isinstance(rule.kind, tuple):
                assert hints[key] is str
            else:
                assert hints[key] is rule.kind, f"{section}.{key}"
    assert set(ALLOWED["train"]["sampling"].kind) == set(SAMPLINGS)
    assert set(ALLOWED["train"]["amp"].kind) == set(AMP_MODES)
    for section, keys in PATH_KEYS.items():
        assert not set(keys) & set(ALLOWED[section])


@pytest.mark.parametrize("name", presets())
def test_every_shipped_preset_builds_a_config_the_trainer_accepts_without_paths(name, tmp_path):
    raw = yaml.safe_load(build_job_config(name, {"train": {"iters": 5, "lr": 0.01}}, tmp_path).read_text())
    assert not set(PATH_KEYS["data"]) & set(raw.get("data", {}))
    cfg = config_from_dict(raw, name)
    assert cfg.train.iters == 5 and cfg.train.lr == 0.01 and cfg.data.cache_dir is None


def test_a_preset_with_paths_loses_them(tmp_path, monkeypatch):
    import worker.server.training_config as C

    shipped = tmp_path / "configs"
    shipped.mkdir()
    (shipped / "odd.yaml").write_text("data: {cache_dir: /elsewhere, train_split: ../x, patch: 64}\n")
    monkeypatch.setattr(C, "CONFIG_DIR", shipped)
    raw = yaml.safe_load(build_job_config("odd", None, tmp_path).read_text())
    assert raw == {"data": {"patch": 64}}


@pytest.mark.parametrize("overrides, text", [
    ({"data": {"cache_dir": "/tmp/x"}}, "paths on the worker are not a client's choice"),
    ({"data": {"train_split": "../../x"}}, "not a key a client may set"),
    ({"train": {"lr": "1e-3"}}, "must be a number"),
    ({"train": {"batch_size": 2.5}}, "must be an integer"),
    ({"train": {"iters": True}}, "must be an integer"),
    ({"train": {"lr": float("nan")}}, "must lie in"),
    ({"train": {"keep_checkpoints": 1000}}, "must lie in"),
    ({"model": {"backbone": "../../weights"}}, "must be one of"),
    ({"hooks": {}}, "not a section"),
    (["train"], "must be a mapping"),
])
def test_bad_overrides_are_refused_with_a_sentence(overrides, text):
    with pytest.raises(ProtocolError) as refused:
        check_overrides(overrides)
    assert refused.value.code == "bad_config" and text in refused.value.message


@pytest.mark.parametrize("name", ["../configs/demo", "/etc/passwd", "demo.yaml", "no_such_preset", ""])
def test_presets_are_names_of_shipped_files_only(name):
    with pytest.raises(ProtocolError) as refused:
        preset_path(name)
    assert refused.value.code == "bad_config"


def test_an_uploaded_config_is_plain_yaml_with_allowed_keys(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train: {iters: 7}\ndata: {patch: 64}\n")
    assert read_uploaded_config(path) == {"train": {"iters": 7}, "data": {"patch": 64}}
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ProtocolError, match="not a readable YAML"):
        read_uploaded_config(path)
