"""Growing a trained UNet to more layers per block keeps what it computes, and the added layers learn."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from training.deepen_unet import deepen_unet, deepening_error


def unet(layers_per_block, *, seed=0, down=("CrossAttnDownBlock2D",) * 3, up=("CrossAttnUpBlock2D",) * 3,
         channels=(8, 16, 16)):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=layers_per_block,
        down_block_types=down, up_block_types=up, cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    with torch.no_grad():  # trained weights: no zero-initialised output layers left
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def run(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, 5, 8, generator=generator)
    return model(sample, torch.tensor([10, 700]), context).sample


@pytest.mark.parametrize("deeper", [[1, 2, 2], [2, 1, 3], 2])
def test_the_deepened_unet_computes_what_the_saved_one_did(deeper):
    source, target = unet(1), unet(deeper, seed=1)
    added = deepen_unet(source, target)
    assert added and all(name.split(".")[0] in ("down_blocks", "up_blocks") for name in added)
    with torch.no_grad():
        torch.testing.assert_close(run(target), run(source), rtol=1e-5, atol=1e-5)


def test_levels_without_attention_and_deeper_sources_grow_too():
    down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    source, target = unet([2, 1, 2], down=down, up=up), unet([3, 2, 2], seed=1, down=down, up=up)
    deepen_unet(source, target)
    with torch.no_grad():
        torch.testing.assert_close(run(target), run(source), rtol=1e-5, atol=1e-5)


def test_the_added_layers_learn():
    target = unet([1, 2, 2], seed=1)
    added = deepen_unet(unet(1), target)
    target.train()
    run(target).pow(2).mean().backward()
    modules = dict(target.named_modules())
    for name in added:
        layer = modules[name]
        output = layer.conv2 if hasattr(layer, "conv2") else layer.proj_out
        assert output.weight.grad is not None and output.weight.grad.abs().sum() > 0, name


def test_other_differences_are_refused_with_the_reason():
    assert "block_out_channels" in deepening_error(unet(1), unet(2, channels=(8, 16, 32)))
    assert "shallower" in deepening_error(unet(2), unet([1, 2, 2]))
    with pytest.raises(ValueError, match="cannot deepen the UNet: .*shallower"):
        deepen_unet(unet(2), unet(1))
