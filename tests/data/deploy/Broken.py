"""A model class that cannot load: the deployer must roll back and say why."""

from typing import Any


class Broken:
    """Raises while loading."""

    def __init__(self, model_path: str) -> None:
        raise RuntimeError(f"weights in {model_path} are corrupt")

    def predict(self, X: Any, feature_names: Any) -> Any:
        return X
