"""The generator's MLflow model file (models-from-code): MLflow runs it to build the model when it loads."""
from mlflow.models import set_model

from avatar3d.training.registry import GeneratorModel

set_model(GeneratorModel())
