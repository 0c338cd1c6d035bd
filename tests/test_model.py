import pytest
import torch

from emunet.model import PRESETS, UNet, UNetConfig, count_parameters, create_model


def test_lab_preset_has_the_labs_parameter_count():
    assert count_parameters(create_model("unet_medical")) == 31_029_698


def test_paper_preset_with_transposed_conv_bias():
    assert count_parameters(create_model("unet_paper")) == 31_030_658


def test_lab_preset_maps_572_to_388():
    model = create_model("unet_medical")
    assert model.output_size(572) == 388
    assert model.input_size(388) == 572
    assert model.border == 184


def test_lab_tensor_names_are_the_mindspore_labs():
    names = set(create_model("unet_medical", width=2).state_dict())
    for name in ["inc.double_conv.0.weight", "down1.maxpool_conv.1.double_conv.0.weight", "up1.up.weight",
                 "up1.conv.double_conv.2.bias", "outc.conv.weight"]:
        assert name in names
    assert "up1.up.bias" not in names  # MindSpore's Conv2dTranspose has no bias by default


def test_forward_shapes_on_tiny_widths():
    valid = create_model("unet_medical", width=2)
    assert valid(torch.zeros(2, 1, 188, 188)).shape == (2, 2, 4, 4)
    same = create_model("unet_cpu", width=2)
    assert same(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("norm", ["none", "batch", "instance", "group"])
def test_configurable_norm_depth_and_dropout(norm):
    model = UNet(UNetConfig(width=4, depth=3, padding="same", norm=norm, dropout=0.5))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_sizes_that_do_not_fit_are_refused():
    model = create_model("unet_medical", width=2)
    with pytest.raises(ValueError, match="does not fit"):
        model.output_size(573)
    with pytest.raises(ValueError):
        model.input_size(387)


def test_unknown_preset_and_option():
    with pytest.raises(ValueError, match="unknown model preset"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown model option"):
        create_model("unet_cpu", colour=3)
    with pytest.raises(ValueError, match="padding"):
        create_model("unet_cpu", padding="full")


def test_every_preset_builds():
    for name in PRESETS:
        assert count_parameters(create_model(name, width=2)) > 0
