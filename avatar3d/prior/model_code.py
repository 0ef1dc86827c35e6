"""The prior's MLflow model file (models-from-code): MLflow runs it to build the model when it loads."""
from mlflow.models import set_model

from avatar3d.prior.registry import PriorModel

set_model(PriorModel())
