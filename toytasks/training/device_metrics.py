"""Metrics without a host sync per step: each step's numbers stay on the device until `drain()`
copies everything pending to the host in one go (every `log_every` steps)."""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch


class DeviceMetrics:
    """Per-step values held on the device: 0-d tensors, [runs] tensors (one value per run of an
    ensemble), or plain floats."""

    def __init__(self):
        self._pending: list[tuple[int, str, torch.Tensor | float]] = []

    def add(self, step: int, values: Mapping[str, torch.Tensor | float]) -> None:
        for name, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self._pending.append((step, name, value))

    def drain(self) -> dict[int, dict[str, float | list[float]]]:
        """All pending values as {step: {name: value}}, with one device-to-host copy; a [runs]
        tensor becomes a list of floats."""
        tensors = [v.double().reshape(-1) for _, _, v in self._pending if isinstance(v, torch.Tensor)]
        copied = iter(torch.cat(tensors).tolist() if tensors else [])
        rows: dict[int, dict[str, float | list[float]]] = defaultdict(dict)
        for step, name, value in self._pending:
            if isinstance(value, torch.Tensor):
                numbers = [next(copied) for _ in range(value.numel())]
                value = numbers if value.dim() else numbers[0]
            rows[step][name] = value
        self._pending.clear()
        return dict(sorted(rows.items()))
