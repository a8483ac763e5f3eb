"""specdecode: lossless speculative decoding for Hugging Face transformers causal language models.

    import specdecode
    out = specdecode.generate(model, input_ids, specdecode.SpeculativeConfig(method="ngram"), max_new_tokens=64)
    out.sequences, out.stats.mean_acceptance_length

Methods come from plugins (``specdecode.proposers`` entry points); :func:`available_methods` lists them.
"""

from .config import SpeculativeConfig
from .errors import ConfigError, PluginError, SpecDecodeError, UnknownMethodError
from .generation import GenerateOutput, build_proposer, cache_kwarg_name, custom_generate, generate
from .hookspecs import hookimpl, hookspec
from .models import encode_prompt, load_model
from .proposer import (
    PerSequenceProposer,
    Proposal,
    Proposer,
    ProposeRequest,
    SamplingParams,
    StartContext,
    VerifyResult,
)
from .registry import (
    MethodInfo,
    ProposerSpec,
    available_methods,
    get_method,
    get_plugin_manager,
    plugin_failures,
    register_plugin,
    reset_registry,
    unregister_plugin,
)
from .sampling import warp_logits, warp_probs
from .stats import GenerationStats

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GenerateOutput",
    "GenerationStats",
    "MethodInfo",
    "PerSequenceProposer",
    "PluginError",
    "Proposal",
    "ProposeRequest",
    "Proposer",
    "ProposerSpec",
    "SamplingParams",
    "SpecDecodeError",
    "SpeculativeConfig",
    "StartContext",
    "UnknownMethodError",
    "VerifyResult",
    "__version__",
    "available_methods",
    "build_proposer",
    "cache_kwarg_name",
    "custom_generate",
    "encode_prompt",
    "generate",
    "get_method",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_model",
    "plugin_failures",
    "register_plugin",
    "reset_registry",
    "unregister_plugin",
    "warp_logits",
    "warp_probs",
]
