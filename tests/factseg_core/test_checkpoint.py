"""Checkpoint loading: our format, the released reference layout (factseg50.pth), and every bad file."""
from __future__ import annotations

import pickle

import pytest
import torch

from factseg_core import CheckpointError, FactSeg, FactSegConfig, load_model, save_checkpoint
from factseg_core.checkpoint import (
    REFERENCE_KEY_RULES,
    convert_reference_state_dict,
    native_to_reference_key,
    reference_to_native_key,
)
from factseg_core.classes import ClassInfo


def reference_state_dict(model: FactSeg) -> dict[str, torch.Tensor]:
    """The model's weights under the reference (SimpleCV) names, built from the documented mapping."""
    return {native_to_reference_key(k): v for k, v in model.state_dict().items()}


def test_mapping_of_documented_reference_names():
    assert reference_to_native_key("resencoder.resnet.layer4.2.bn3.running_var") == "encoder.layer4.2.bn3.running_var"
    assert reference_to_native_key("fgfpn.fpn_inner1.weight") == "fg_fpn.lateral.0.weight"
    assert reference_to_native_key("bifpn.fpn_layer4.bias") == "bi_fpn.output.3.bias"
    assert reference_to_native_key("fg_decoder.blocks.3.2.0.weight") == "fg_decoder.stages.3.2.conv.weight"
    assert reference_to_native_key("bi_decoder.blocks.0.0.1.num_batches_tracked") == (
        "bi_decoder.stages.0.0.bn.num_batches_tracked"
    )
    assert reference_to_native_key("fg_cls.weight") == "fg_head.weight"
    assert reference_to_native_key("bi_cls.bias") == "bi_head.bias"
    assert reference_to_native_key("resencoder.resnet.fc.weight") == "encoder.fc.weight"  # rejected later, strictly
    assert reference_to_native_key("fbatt_block_list.0.weight") is None
    assert len(REFERENCE_KEY_RULES) == 6


def test_r50_reference_layout_has_438_entries_and_round_trips():
    model = FactSeg()
    ref = reference_state_dict(model)
    assert len(ref) == 438 and None not in ref
    assert sum(k.startswith("resencoder.resnet.") for k in ref) == 318
    assert all(reference_to_native_key(r) == n for r, n in zip(ref, model.state_dict()))


@pytest.mark.parametrize("wrap", ["simplecv", "bare", "ddp"])
def test_reference_checkpoint_loads_strictly_and_predicts_the_same(tiny_model, tmp_path, wrap):
    ref = reference_state_dict(tiny_model)
    if wrap == "ddp":
        ref = {f"module.{k}": v for k, v in ref.items()}
    payload = {"model": ref, "opt": {"state": {}, "param_groups": []}, "global_step": 60000} if wrap != "bare" else ref
    path = tmp_path / "factseg_ref.pth"
    torch.save(payload, path)
    loaded = load_model(path)
    assert loaded.config.backbone == "resnet18" and loaded.config.num_classes == 16
    assert loaded.classes[12].name == "storage_tank"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny_model(x), atol=0, rtol=0)


def test_own_checkpoint_round_trip_keeps_config_and_classes(tmp_path):
    classes = (ClassInfo(0, "background", (0, 0, 0)), ClassInfo(1, "boat", (255, 0, 0)), ClassInfo(2, "car", (0, 255, 0)))
    model = FactSeg(FactSegConfig(backbone="resnet18", num_classes=3), classes).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path, iteration=7)
    loaded = load_model(path)
    assert loaded.classes == classes and loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert torch.load(path, weights_only=True)["iteration"] == 7


def test_missing_and_unexpected_keys_are_named(tiny_model, tmp_path):
    ref = reference_state_dict(tiny_model)
    del ref["bi_cls.bias"]
    ref["fbatt_block_list.0.conv.weight"] = torch.zeros(1)
    torch.save(ref, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="unexpected keys in reference checkpoint: fbatt_block_list.0.conv.weight"):
        load_model(tmp_path / "a.pth")
    del ref["fbatt_block_list.0.conv.weight"]
    torch.save(ref, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: bi_head\.bias"):
        load_model(tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        convert_reference_state_dict({"resencoder.resnet.conv1.weight": torch.zeros(1), "head.x": torch.zeros(1)})


def test_shape_mismatch_is_named(tiny_model, tmp_path):
    ref = reference_state_dict(tiny_model)
    ref["fgfpn.fpn_layer2.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save(ref, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match=r"shapes do not match.*fg_fpn\.output\.1\.weight"):
        load_model(tmp_path / "s.pth")


def test_torchvision_imagenet_weights_load_into_the_backbone():
    source = FactSeg(FactSegConfig(backbone="resnet18")).encoder.state_dict()
    source = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.items()}
    source["fc.weight"], source["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    model = FactSeg(FactSegConfig(backbone="resnet18"))
    model.encoder.load_torchvision_weights(source)
    torch.testing.assert_close(model.encoder.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])
    del source["layer1.0.bn1.weight"]
    with pytest.raises(RuntimeError, match="layer1.0.bn1.weight"):
        model.encoder.load_torchvision_weights(source)


class _Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "model file not found"),
        ("empty", "model file is empty"),
        ("garbage", "is not a FactSeg model file"),
        ("truncated", "is not a FactSeg model file"),
        ("pickle", r"is not a FactSeg model file \(it holds Python objects"),
        ("list", "holds a list, not a checkpoint dict"),
        ("junk_dict", r"neither a FactSeg-QGIS checkpoint nor a \(reference\) state dict"),
    ],
)
def test_bad_files_give_clear_errors(kind, message, tmp_path, tiny_checkpoint):
    path = tmp_path / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 100)
    elif kind == "truncated":
        data = tiny_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"model": _Hostile()}))
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "junk_dict":
        torch.save({"hello": "world"}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    assert "Traceback" not in str(info.value) and "weights_only" not in str(info.value)


def _own_checkpoint(model: FactSeg) -> dict:
    from factseg_core.checkpoint import checkpoint_dict

    return checkpoint_dict(model)


def _broken(ckpt: dict, kind: str) -> dict:
    """Our checkpoint with one structural problem of the given kind."""
    config, classes, state = ckpt["config"], ckpt["classes"], ckpt["model"]
    changes = {
        "no_config": lambda: ckpt.pop("config"),
        "config_list": lambda: ckpt.update(config=list(config.items())),
        "config_unknown_field": lambda: config.update(dropout=0.5),
        "config_bad_backbone_type": lambda: config.update(backbone=18),
        "config_unknown_backbone": lambda: config.update(backbone="resnet19"),
        "config_zero_classes": lambda: config.update(num_classes=0),
        "config_bool_channels": lambda: config.update(fpn_channels=True),
        "no_classes": lambda: ckpt.pop("classes"),
        "classes_string": lambda: ckpt.update(classes="background,ship"),
        "classes_dict": lambda: ckpt.update(classes={"0": "background"}),
        "class_entry_string": lambda: classes.__setitem__(3, "baseball_diamond"),
        "class_entry_no_color": lambda: classes[2].pop("color"),
        "class_entry_bad_color": lambda: classes[2].update(color=[0, 300, 0]),
        "class_entry_wrong_id": lambda: classes[4].update(id=7),
        "class_entry_float_id": lambda: classes[0].update(id=0.0),
        "class_entry_empty_name": lambda: classes[1].update(name=""),
        "class_count": lambda: classes.pop(),
        "no_model": lambda: ckpt.pop("model"),
        "model_list": lambda: ckpt.update(model=list(state.values())),
        "model_non_tensor": lambda: state.update({"fg_head.bias": [0.0] * 16}),
        "version_float": lambda: ckpt.update(version=1.0),
        "version_bool": lambda: ckpt.update(version=True),
    }
    changes[kind]()
    return ckpt


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no_config", "has no 'config'"),
        ("config_list", "'config' is a list, expected a mapping"),
        ("config_unknown_field", "'config' has unknown fields dropout"),
        ("config_bad_backbone_type", "'config' field backbone is 18, expected a string"),
        ("config_unknown_backbone", "describes no buildable model: unknown backbone 'resnet19'"),
        ("config_zero_classes", "'config' field num_classes is 0, expected a positive whole number"),
        ("config_bool_channels", "'config' field fpn_channels is True"),
        ("no_classes", "has no 'classes' table"),
        ("classes_string", "'classes' is a str, expected a list"),
        ("classes_dict", "'classes' is a dict, expected a list"),
        ("class_entry_string", "'classes' entry 3 is a str"),
        ("class_entry_no_color", "'classes' entry 2 has no color"),
        ("class_entry_bad_color", r"'classes' entry 2 has color \[0, 300, 0\], expected three whole numbers"),
        ("class_entry_wrong_id", "'classes' entry 4 has id 7, expected 4"),
        ("class_entry_float_id", "'classes' entry 0 has id 0.0"),
        ("class_entry_empty_name", "'classes' entry 1 has name ''"),
        ("class_count", "'classes' has 15 entries but the model has 16 output classes"),
        ("no_model", "has no 'model' state dict"),
        ("model_list", "'model' is a list, expected a state dict"),
        ("model_non_tensor", "'model' entry fg_head.bias is a list, not a tensor"),
        ("version_float", "format version 1.0 is not supported"),
        ("version_bool", "format version True is not supported"),
    ],
)
def test_structural_problems_are_named_in_one_sentence(tiny_model, tmp_path, kind, message):
    path = tmp_path / f"{kind}.pt"
    torch.save(_broken(_own_checkpoint(tiny_model), kind), path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text and "Traceback" not in text


def test_reference_state_dict_with_a_flat_head_is_named(tiny_model, tmp_path):
    ref = reference_state_dict(tiny_model)
    ref["fg_cls.weight"] = torch.zeros(16)
    torch.save(ref, tmp_path / "flat.pth")
    with pytest.raises(CheckpointError, match="too few dimensions"):
        load_model(tmp_path / "flat.pth")
