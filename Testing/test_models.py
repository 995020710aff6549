"""Architectures: exact parameter counts of the papers, output shapes, options, and ``breastseg models``."""

from __future__ import annotations

import json

import pytest
import torch

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.models.registry import (
    ARCHITECTURES,
    build_model,
    list_architectures,
    nnunet_kernels_strides,
    parameter_count,
)
from BreastSegmentationLib.models.widening import widen_inputs


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


@pytest.fixture(scope="module")
def fcn() -> torch.nn.Module:
    return build_model("fcn_resnet50")


def test_fcn_resnet50_matches_seed_001_count_shape_and_output_stride_8(fcn: torch.nn.Module) -> None:
    model = fcn
    assert parameter_count(model) == 32_943_617
    x = torch.randn(1, 2, 64, 64)
    with torch.inference_mode():
        features = model.eval().backbone(x)
    assert features[-1].shape == (1, 2048, 8, 8)  # layer4 at input/8: layer3 and layer4 dilated, not strided
    assert features[-2].shape == (1, 1024, 8, 8)
    assert forward(model, x).shape == (1, 1, 64, 64)


def test_fcn_state_dict_uses_torchvision_names(fcn: torch.nn.Module) -> None:
    keys = set(fcn.state_dict())
    assert {"backbone.conv1.weight", "backbone.layer4.2.conv3.weight", "backbone.layer3.0.downsample.0.weight",
            "classifier.0.weight", "classifier.4.bias"} <= keys


@pytest.mark.parametrize(("norm", "act", "layer"), [("batch", "relu", torch.nn.BatchNorm2d),
                                                    ("instance", "leakyrelu", torch.nn.InstanceNorm2d)])
def test_unetpp_table_1_count_with_both_norm_options(norm: str, act: str, layer: type) -> None:
    model = build_model("unetpp", norm=norm, act=act)
    assert parameter_count(model) == 2_410_468
    assert any(isinstance(module, layer) for module in model.modules())
    output = forward(model, torch.randn(2, 2, 64, 64))
    assert isinstance(output, torch.Tensor) and output.shape == (2, 1, 64, 64)


def test_leakyrelu_option_has_the_authors_slope() -> None:
    slopes = {m.negative_slope for m in build_model("unetpp", act="leakyrelu").modules()
              if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}


@pytest.mark.parametrize("name", ["unetpp_small", "unet", "unet_small"])
def test_small_and_residual_2d_models_return_logits_of_input_size(name: str) -> None:
    output = forward(build_model(name, in_channels=3, out_channels=2), torch.randn(1, 3, 64, 48))
    assert output.shape == (1, 2, 64, 48)


def test_dynunet3d_plans_a_tiny_patch_and_returns_a_tensor_in_eval() -> None:
    model = build_model("dynunet3d", patch_size=(16, 32, 32), spacing_mm=(1.0, 1.0, 1.0))
    output = forward(model, torch.randn(1, 2, 16, 32, 32))
    assert isinstance(output, torch.Tensor) and output.shape == (1, 1, 16, 32, 32)


def test_dynunet3d_deep_supervision_only_changes_training_output() -> None:
    model = build_model("dynunet3d", patch_size=(16, 32, 32), spacing_mm=(1.0, 1.0, 1.0), deep_supervision=True)
    x = torch.randn(1, 2, 16, 32, 32)
    assert model.train()(x).shape == (1, 2, 1, 16, 32, 32)  # final output and one supervision head, stacked
    assert forward(model, x).shape == (1, 1, 16, 32, 32)


def test_nnunet_plan_keeps_coarse_axis_unpooled_until_others_catch_up() -> None:
    kernels, strides = nnunet_kernels_strides((16, 64, 64), (3.0, 1.0, 1.0))
    assert strides[0] == [1, 1, 1] and strides[1] == [1, 2, 2]
    assert kernels[0] == [1, 3, 3]  # z is 3x coarser: in-plane kernels only at full resolution
    assert kernels[-1] == [3, 3, 3] and len(kernels) == len(strides)


def test_odd_patch_size_is_an_input_error() -> None:
    with pytest.raises(InputError, match="halved"):
        build_model("dynunet3d", patch_size=(16, 30, 32), spacing_mm=(1.0, 1.0, 1.0))


@pytest.mark.parametrize(("name", "options", "message"), [
    ("resnet_unet", {}, "unknown architecture"),
    ("unetpp", {"depth": 4}, "no option depth"),
    ("unetpp", {"norm": "group"}, "norm must be one of"),
    ("unetpp", {"features": (8, 16)}, "cannot be built"),
])
def test_bad_architecture_requests_are_input_errors(name: str, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_model(name, **options)


def test_list_architectures_reports_the_paper_counts() -> None:
    listed = {item["name"]: item for item in list_architectures()}
    assert set(listed) == set(ARCHITECTURES)
    assert listed["fcn_resnet50"]["parameters"] == 32_943_617
    assert listed["unetpp"]["parameters"] == 2_410_468
    assert listed["dynunet3d"]["spatial_dims"] == 3
    assert listed["unetpp_small"]["options"]["features"] == [16, 16, 32, 64, 128, 16]
    assert listed["unetpp_small"]["parameters"] < listed["unetpp"]["parameters"]


def test_breastseg_models_prints_every_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--progress", "none", "models"]) == 0
    table = capsys.readouterr().out
    for name in ARCHITECTURES:
        assert name in table
    assert "32,943,617" in table and "2,410,468" in table


def test_breastseg_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--progress", "none", "models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["name"] for item in listed] == list(ARCHITECTURES)


def test_a_widened_network_starts_out_computing_what_the_trained_one_did():
    """New inputs get zero weights: whatever they hold, the widened network's output is the trained one's."""
    torch.manual_seed(0)
    trained = build_model("unet_small", in_channels=2).eval()
    wider = build_model("unet_small", in_channels=3).eval()
    wider.load_state_dict(widen_inputs(trained.state_dict(), ["pre", "post"], ["post", "subtraction@-1", "pre"],
                                       wider.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = trained(images[:, [2, 0]])
        assert torch.allclose(wider(images), expected, atol=1e-5)
        images[:, 1] = 100.0 * torch.randn(2, 32, 32)
        assert torch.allclose(wider(images), expected, atol=1e-5)
    with pytest.raises(InputError, match="must be the old ones and more"):
        widen_inputs(trained.state_dict(), ["pre", "post"], ["post", "pre"], trained.state_dict())
    with pytest.raises(InputError, match="cannot widen"):
        widen_inputs(trained.state_dict(), ["pre", "post"], ["pre", "post", "subtraction"],
                     build_model("unet_small", in_channels=3, channels=(8, 16, 32, 64, 128)).state_dict())
