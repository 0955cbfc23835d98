"""Models: resolution of the ``model`` group, the embedded models, chat templates, vLLM settings,
and the embedded vLLM CPU server (``server.py``).

Importing this package is cheap: torch, transformers and vLLM load only when a
model is built or an engine started. Imports nothing else from fgrft (never the stages,
tracking, the app, the call engine or the loaders).
"""
from .chat_templates import (
    has_generation_markers,
    training_chat_template,
    write_training_chat_template,
)
from .embedded import (
    EMBEDDED_MODELS,
    EmbeddedModelError,
    build_info,
    embedded_model_dir,
    ensure_built,
    is_built,
    smollm2_gguf_path,
)
from .vllm_settings import vllm_engine_kwargs
from .resolve import ModelSpecError, ResolvedModel, check_model_spec, resolve_model

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModelError",
    "ModelSpecError",
    "ResolvedModel",
    "build_info",
    "check_model_spec",
    "embedded_model_dir",
    "ensure_built",
    "has_generation_markers",
    "is_built",
    "resolve_model",
    "smollm2_gguf_path",
    "training_chat_template",
    "vllm_engine_kwargs",
    "write_training_chat_template",
]
