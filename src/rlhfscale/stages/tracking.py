"""Experiment tracking behind one interface: every run directory's logged numbers also go to TensorBoard (by
default), MLflow and Weights & Biases (when asked for).

Which trackers run is an execution choice, not a setting of any stage (it changes no result, so it is in
no stage's key): the environment variable ``RLHFSCALE_TRACKING`` lists them, comma-separated, from
``tensorboard`` (the default), ``mlflow``, ``wandb`` and ``none``.
- TensorBoard writes event files to ``<run>/tensorboard/`` (`torch.utils.tensorboard`).
- MLflow logs to ``MLFLOW_TRACKING_URI``, by default a local file store ``<run>/mlruns``.
- Weights & Biases runs offline unless ``WANDB_MODE`` says otherwise, into ``<run>/wandb``, in project
  ``WANDB_PROJECT`` (default ``rlhfscale``).
MLflow and W&B come with the ``tracking`` extra; asking for one that is not installed is bad input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import BadInput
from ..registry import Registry

TRACKING_ENV = "RLHFSCALE_TRACKING"


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def _require(module: str, name: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise BadInput(f"{TRACKING_ENV}: {name}: expected the {module} package, found it not installed "
                       "(pip install 'rlhfscale[tracking]')") from None


class TensorBoard:
    def __init__(self, path: Path, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, path: Path, config: Mapping[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow")
        self.mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", (path / "mlruns").resolve().as_uri()))
        self.run = self.mlflow.start_run(run_name=path.name)
        self.mlflow.log_params(dict(config))

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class WandB:
    def __init__(self, path: Path, config: Mapping[str, Any]) -> None:
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlhfscale"), name=path.name, dir=str(path),
                              mode=os.environ.get("WANDB_MODE", "offline"), config=dict(config), reinit=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS: Registry[type] = Registry.of("tracker", {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB})


def chosen() -> list[str]:
    """The trackers ``RLHFSCALE_TRACKING`` names (default: tensorboard); unknown names are bad input."""
    names = [n.strip() for n in os.environ.get(TRACKING_ENV, "tensorboard").split(",") if n.strip()]
    if names == ["none"]:
        return []
    for name in names:
        if name not in TRACKERS:
            raise BadInput(f"{TRACKING_ENV}: expected names from {', '.join(TRACKERS)} or none, found {name!r}")
    return names


def flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as flat dotted keys (trackers show parameters that way)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def open_trackers(path: Path, config: Mapping[str, Any]) -> list[Tracker]:
    """The chosen trackers for a run directory, started with its (flattened) settings."""
    return [TRACKERS.get(name)(path, flat(config)) for name in chosen()]
