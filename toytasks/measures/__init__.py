"""Progress measures: pure functions of (model, task, fixed evaluation data) -> named numbers."""
import dataclasses

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    """What every measure's config has: when it runs."""

    every: int | None = None
    """Evaluate every this many steps; null evaluates at the checkpoint-series steps."""

    def __post_init__(self):
        if self.every is not None and self.every < 1:
            raise ConfigError("every", f"must be at least 1 or null, got {self.every}")
