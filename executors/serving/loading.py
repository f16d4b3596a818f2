"""Loading a user's model class: find it, import it, construct it (`ranvier serve CLASS`).

- `Class`: the file `Class.py` in the working directory defines `class Class` (Myelin's
  `MODEL_NAME` convention);
- `module.Class` or `module:Class`: `import module` (the working directory is on the path);
- the constructor receives `model_path=DIR` when it has a `model_path` parameter (or `**kwargs`),
  otherwise nothing.

The class is loaded before the server's port opens, so a server that answers has its model.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from events.errors import RanvierError


class ModelLoadError(RanvierError):
    """The user's model class could not be found, imported or constructed."""


def _import_file(path: Path, module_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_class(spec: str, search_dir: Path) -> type:
    """The class named by `spec` (`Class`, `module.Class` or `module:Class`) from `search_dir`."""
    if ":" in spec:
        module_name, _, class_name = spec.partition(":")
    elif "." in spec:
        module_name, _, class_name = spec.rpartition(".")
    else:
        module_name, class_name = spec, spec
    if not module_name or not class_name.isidentifier():
        raise ModelLoadError(
            f"invalid model class {spec!r}", hint="give Class, module.Class or module:Class"
        )
    if str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    try:
        file = search_dir / f"{module_name}.py"
        if file.is_file():
            module = _import_file(file, module_name)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"no module {module_name!r} for model class {spec!r}",
            hint=f"put {module_name}.py in {search_dir} or give module:Class",
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelLoadError(
            f"module {module_name!r} has no class {class_name!r}",
            hint="name the class like its file, as Myelin's MODEL_NAME, or give module:Class",
        )
    if not callable(getattr(cls, "predict", None)):
        raise ModelLoadError(f"class {spec!r} has no predict(X, feature_names) method")
    return cls


def instantiate(cls: type, model_path: Path | None) -> object:
    """An instance of `cls`, given `model_path=` when its constructor accepts it."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        params = []  # type: ignore[assignment]  # builtins without a signature take no model_path
    accepts = any(p.name == "model_path" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    try:
        if accepts and model_path is not None:
            return cls(model_path=str(model_path))
        return cls()
    except Exception as exc:
        raise ModelLoadError(
            f"constructing {cls.__name__} failed: {type(exc).__name__}: {exc}"
        ) from exc
