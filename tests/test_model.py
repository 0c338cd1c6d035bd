import pytest
import torch

from emunet.model.unet import PRESETS, UNet, UNetConfig, center_crop, count_parameters, create_model


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_center_crop_gradient_keeps_the_layout(layout):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_(True)
    crop = center_crop(x, 5, 4)
    assert torch.equal(crop, x.detach()[..., 2:7, 2:6])
    torch.autograd.gradcheck(lambda t: center_crop(t, 5, 4), (x,))
    (g,) = torch.autograd.grad((crop * torch.randn_like(crop)).sum(), x)
    assert g.is_contiguous(memory_format=layout)
    assert g[..., :2, :].abs().sum() == 0 and g[..., 2:7, 2:6].abs().sum() > 0


def test_lab_net_gradients_are_channels_last_throughout():
    model = UNet(UNetConfig(width=2, depth=2)).to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, model.input_size(8), model.input_size(8)).contiguous(memory_format=torch.channels_last)
    skip_grads = []
    model.inc.register_full_backward_hook(lambda m, gin, gout: skip_grads.append(gout[0]))
    model(x).sum().backward()
    assert skip_grads and skip_grads[0].is_contiguous(memory_format=torch.channels_last)


# std of N(0, 0.06) cut at +-0.12: 0.06 * sqrt(1 - 2 * 2 * phi(2) / (Phi(2) - Phi(-2)))
TRUNCATED_STD = 0.06 * (1 - 4 * 0.05399096651318806 / 0.9544997361036416) ** 0.5


@pytest.mark.parametrize("preset", ["unet_medical", "unet_paper"])
def test_lab_presets_draw_the_labs_initial_weights(preset):
    assert TRUNCATED_STD == pytest.approx(0.0528, abs=5e-5)
    torch.manual_seed(0)
    model = create_model(preset)
    assert model.cfg.init == "lab"
    convs = [m for m in model.modules() if type(m) is torch.nn.Conv2d]
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 19 and len(ups) == 4  # 9 double convs and the 1x1 output conv; 4 up-samplings
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert weights.std().item() == pytest.approx(TRUNCATED_STD, rel=0.01)
    assert weights.abs().max().item() <= 0.12
    for m in convs:
        if m.weight.numel() >= 10_000:
            assert m.weight.std().item() == pytest.approx(TRUNCATED_STD, rel=0.03)
        assert (m.bias == 0).all()
    for m in ups:
        assert m.weight.std().item() == pytest.approx(0.01, rel=0.03)
        assert m.bias is None or (m.bias == 0).all()


def test_other_presets_keep_torch_initialisation_and_init_is_a_setting():
    torch.manual_seed(0)
    cpu = create_model("unet_cpu")
    assert cpu.cfg.init == "torch"
    deepest = cpu.down4.maxpool_conv[1].double_conv[0].weight  # kaiming-uniform: std 1/sqrt(3 fan_in)
    assert deepest.std().item() == pytest.approx((3 * deepest[0].numel()) ** -0.5, rel=0.05)
    torch_medical = create_model("unet_medical", width=4, init="torch")
    assert torch_medical.outc.conv.bias.abs().sum() > 0
    with pytest.raises(ValueError, match="model.init"):
        create_model("unet_medical", width=4, init="kaiming")


def test_model_init_is_a_checked_config_key():
    from emunet.config import ConfigError, load_config

    assert load_config(None, ["model.init=torch"]).model.init == "torch"
    with pytest.raises(ConfigError, match="model.init"):
        load_config(None, ["model.init=xavier"])
