"""tuneforge: plugin-based fine-tuning of large language models.

Plugin authors need only what this module exports: ``hookimpl`` and the spec types.
Importing it stays light (no torch), so the CLI starts fast.
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .specs import (  # noqa: E402
    AdapterSpec,
    ChatTemplateSpec,
    CommandSpec,
    ConfigKey,
    DataKind,
    DatasetFormatSpec,
    InferenceEngineSpec,
    MethodSpec,
    ModelLoaderSpec,
    QuantizerSpec,
    Requirement,
    RewardFunctionSpec,
    StageSpec,
    TrainablePlan,
)

__all__ = [
    "__version__",
    "hookimpl",
    "AdapterSpec",
    "ChatTemplateSpec",
    "CommandSpec",
    "ConfigKey",
    "DataKind",
    "DatasetFormatSpec",
    "InferenceEngineSpec",
    "MethodSpec",
    "ModelLoaderSpec",
    "QuantizerSpec",
    "Requirement",
    "RewardFunctionSpec",
    "StageSpec",
    "TrainablePlan",
]
