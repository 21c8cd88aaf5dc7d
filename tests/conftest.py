import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from gligen_ext import GroundingEncoders, PhraseEncoder  # noqa: E402
from gligen_ext.testing import tiny_text_encoder, tiny_tokenizer, tiny_unet  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clip_tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def text_encoder():
    return tiny_text_encoder()


@pytest.fixture(scope="session")
def encoders(clip_tokenizer, text_encoder):
    return GroundingEncoders(encode_phrases=PhraseEncoder(clip_tokenizer, text_encoder))


@pytest.fixture
def unet():
    return tiny_unet()


@pytest.fixture
def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    return sample, torch.tensor([10, 500]), context


def open_gates(unet, value: float = 1.0) -> None:
    """Set every gate to a non-zero value: random-weight tests cannot see grounding with closed gates."""
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(value)


def randomize(module, seed: int = 0) -> None:
    """Give every parameter (nulls, gates, zero-initialised convs included) random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
