"""Layout maps (opt-in) for boxes and keypoints: identity at init, nothing for an empty layout, painted in place."""

import pytest
import torch
from conftest import randomize

from gligen_ext import (
    add_grounding_adapter,
    load_grounding_adapter,
    null_grounding,
    prepare_grounding,
    read_adapter_config,
    save_grounding_adapter,
)
from gligen_ext.testing import tiny_unet
from gligen_ext.tokenizers.layout_maps import paint_boxes, paint_points

LAYOUTS = {
    "boxes": {"boxes": [{"phrase": "a cat", "box": [0.0, 0.0, 0.5, 0.25]}]},
    "keypoints": {"keypoints": [{"points": [[0.2, 0.3, 2]] + [[0.0, 0.0, 0]] * 16}]},
}


def test_boxes_are_filled_and_tiny_boxes_keep_their_centre_cell():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [0.5, 0.5, 0.52, 0.52], [0.0, 0.0, 1.0, 1.0]]])
    painted = paint_boxes(boxes, torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[[1.0], [2.0], [5.0]]]), (4, 4))
    expected = torch.zeros(4, 4)
    expected[0, :2] = 1.0  # rows are y: the box spans the top quarter, left half
    expected[2, 2] = 2.0  # smaller than a cell, kept at its centre; the padded third box paints nothing
    assert torch.equal(painted[0, 0], expected)


def test_points_peak_at_their_cell():
    painted = paint_points(torch.tensor([[[0.125, 0.875]]]), torch.ones(1, 1), torch.ones(1, 1), (4, 4), sigma=0.5)
    assert painted[0, 0].argmax() == 3 * 4 + 0 and painted[0, 0, 3, 0] == 1.0


@pytest.mark.parametrize("modality", ["boxes", "keypoints"])
def test_layout_map_is_identity_at_init_and_zero_without_a_layout(modality, unet_inputs, encoders, tmp_path):
    sample, timestep, context = unet_inputs
    base = tiny_unet()
    with torch.no_grad():
        expected = base(sample, timestep, context).sample
    unet = tiny_unet()
    add_grounding_adapter(unet, modality, tokenizer_options={modality: {"layout_map_channels": 8}})
    grounding = prepare_grounding(unet, LAYOUTS[modality], encoders, batch_size=2)
    with torch.no_grad():
        assert torch.equal(unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample,
                           expected), "zero-initialised last convolution and closed gates: the base's output"
    tokenizer = unet.position_net.adapters["default"].tokenizers[modality]
    randomize(tokenizer, 0)
    latents = sample[:, :, :8, :12]
    with torch.no_grad():
        residual = tokenizer.conv_in_residual(grounding["default"][modality], latents=latents, conv_in=unet.conv_in)
        empty = tokenizer.conv_in_residual(null_grounding(grounding)["default"][modality], latents=latents,
                                           conv_in=unet.conv_in)
    assert residual.shape == (2, 32, 8, 12) and residual.abs().sum() > 0
    assert torch.equal(empty, torch.zeros_like(empty)), "no layout, no residual: no biases anywhere"
    far_corner = residual[:, :, -2:, -3:].abs().max()  # beyond both 3x3 convolutions' reach of the layout
    assert far_corner == 0 if modality == "boxes" else far_corner < 1e-6 * residual.abs().max()  # Gaussian tails

    path = save_grounding_adapter(unet, tmp_path, dtype="fp32")
    assert read_adapter_config(path)["modalities"][modality]["options"]["layout_map_channels"] == 8
    loaded = tiny_unet()
    load_grounding_adapter(loaded, path)
    again = loaded.position_net.adapters["default"].tokenizers[modality]
    with torch.no_grad():
        assert torch.equal(again.conv_in_residual(grounding["default"][modality], latents=latents,
                                                  conv_in=loaded.conv_in), residual)
