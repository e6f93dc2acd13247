"""Model zoo: a registry of CNNs sized for 28-32 px medical and benchmark images."""

from qsal.models import mobilenet, resnet, small_cnn  # noqa: F401  (registers the builders)
from qsal.models.registry import count_macs, count_parameters, create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "count_parameters", "count_macs"]
