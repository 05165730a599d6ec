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
        ("garbage", "corrupt, truncated or not a PyTorch weights file"),
        ("truncated", "corrupt, truncated or not a PyTorch weights file"),
        ("pickle", "corrupt, truncated or not a PyTorch weights file"),
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
    assert "Traceback" not in str(info.value)
