"""Where training metrics go besides metrics.jsonl: TensorBoard or Weights & Biases, when installed and asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


class MetricsSink:
    """TensorBoard or Weights & Biases, when installed and asked for."""

    def __init__(self, kind: str, out: Path, config: dict[str, Any]) -> None:
        self.kind, self.writer = kind, None
        try:
            if kind == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            elif kind == "wandb":
                import wandb

                self.writer = wandb.init(project="transformer-squared", dir=str(out), config=config)
        except ImportError:
            raise ConfigError(f"logger '{kind}' is not installed: pip install 'transformer-squared[{kind}]'") from None

    def log(self, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.kind == "tensorboard":
            for k, v in values.items():
                self.writer.add_scalar(k, v, row["step"])
        elif self.kind == "wandb":
            self.writer.log(values, step=row["step"])

    def close(self) -> None:
        if self.writer is not None:
            (self.writer.close if self.kind == "tensorboard" else self.writer.finish)()
