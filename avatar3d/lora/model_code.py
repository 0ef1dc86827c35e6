"""The LoRA's MLflow model file (models-from-code): MLflow runs it to build the model when it loads."""
from mlflow.models import set_model

from avatar3d.lora.registry import LoraModel

set_model(LoraModel())
