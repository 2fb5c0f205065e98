"""Compact architectures, ExpandNets expansion, auxiliary training parts, regularizers,
and the built-in digits data and trainer.

Importing this package registers the built-in architectures. Data and training live in
``compactify.models.data`` / ``compactify.models.train`` and are imported on demand (they
pull in scikit-learn).
"""

from compactify.models import architectures  # noqa: F401  (registers the models)
from compactify.models.auxiliary import attach_auxiliary, auxiliary_losses, detach_auxiliary
from compactify.models.expand import expand, expandable_layers, normalize_mode
from compactify.models.registry import (
    MODES,
    ModelEntry,
    applicable_modes,
    build_model,
    create_model,
    default_input_shape,
    list_models,
    model_entry,
    register_model,
    split_name,
)

__all__ = [
    "MODES",
    "ModelEntry",
    "applicable_modes",
    "attach_auxiliary",
    "auxiliary_losses",
    "build_model",
    "create_model",
    "default_input_shape",
    "detach_auxiliary",
    "expand",
    "expandable_layers",
    "list_models",
    "model_entry",
    "normalize_mode",
    "register_model",
    "split_name",
]
