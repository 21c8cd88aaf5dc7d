"""gligen-ext: GLIGEN-style grounding adapters for frozen diffusers Stable Diffusion UNets."""

__version__ = "0.1.0"

from .adapters import (  # noqa: E402
    ADAPTER_WEIGHTS_NAME,
    AdapterFileError,
    AdapterMismatchError,
    load_grounding_adapter,
    read_adapter_config,
    save_grounding_adapter,
)
from .attention import attention_backends, enable_best_attention, xformers_available  # noqa: E402
from .checkpoint_formats import ConversionError  # noqa: E402
from .convert import convert_checkpoint, load_conv_in_weights, save_converted  # noqa: E402
from .encoders import PhraseEncoder, ReferenceImageEncoder  # noqa: E402
from .export import export_comfyui  # noqa: E402
from .gated_attention import GatedSelfAttention, GroundingFuser  # noqa: E402
from .grounding import (  # noqa: E402
    UnhandledModalityError,
    concat_grounding,
    null_grounding,
    prepare_grounding,
)
from .inject import (  # noqa: E402
    GroundingAdapterError,
    adapter_parameters,
    add_grounding_adapter,
    grounding_adapters,
    remove_grounding_adapter,
    set_grounding_scale,
    unload_grounding_adapters,
)
from .layout import Layout, LayoutError, parse_layout, parse_layouts  # noqa: E402
from .lora import (  # noqa: E402
    DEFAULT_LORA_TARGETS,
    GroundingLoraError,
    LoraParentMismatchError,
    adapter_lora_parameters,
    add_adapter_lora,
    merge_adapter_lora,
    unload_adapter_lora,
)
from .lora_files import LORA_WEIGHTS_NAME, load_adapter_lora, read_lora_config, save_adapter_lora  # noqa: E402
from .tokenizers import (  # noqa: E402
    GroundingDims,
    GroundingEncoders,
    GroundingTokenizer,
    available_modalities,
    get_tokenizer_class,
    register_tokenizer,
)

__all__ = [
    "ADAPTER_WEIGHTS_NAME",
    "AdapterFileError",
    "AdapterMismatchError",
    "ConversionError",
    "DEFAULT_LORA_TARGETS",
    "GatedSelfAttention",
    "GroundingAdapterError",
    "GroundingDims",
    "GroundingEncoders",
    "GroundingFuser",
    "GroundingLoraError",
    "GroundingTokenizer",
    "LORA_WEIGHTS_NAME",
    "Layout",
    "LayoutError",
    "LoraParentMismatchError",
    "PhraseEncoder",
    "ReferenceImageEncoder",
    "UnhandledModalityError",
    "adapter_lora_parameters",
    "adapter_parameters",
    "add_adapter_lora",
    "add_grounding_adapter",
    "attention_backends",
    "available_modalities",
    "concat_grounding",
    "convert_checkpoint",
    "enable_best_attention",
    "export_comfyui",
    "get_tokenizer_class",
    "grounding_adapters",
    "load_adapter_lora",
    "load_conv_in_weights",
    "load_grounding_adapter",
    "merge_adapter_lora",
    "null_grounding",
    "parse_layout",
    "parse_layouts",
    "prepare_grounding",
    "read_adapter_config",
    "read_lora_config",
    "register_tokenizer",
    "remove_grounding_adapter",
    "save_adapter_lora",
    "save_converted",
    "save_grounding_adapter",
    "set_grounding_scale",
    "unload_adapter_lora",
    "unload_grounding_adapters",
    "xformers_available",
]
