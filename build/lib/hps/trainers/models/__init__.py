"""Model families, registered by name: ``create_model(name, num_classes=..., width=..., ...)``."""

from hps.trainers.models import airnet, branchnet, efficientnet, mobilenet, rescnn, resnet  # noqa: F401  (register)
from hps.trainers.models._registry import (
    create_model,
    list_models,
    model_entry,
    register_model,
    round_channels,
    round_repeats,
)

__all__ = ["create_model", "list_models", "model_entry", "register_model", "round_channels", "round_repeats"]
