"""The one FLOP counter: forward FLOPs from torch.utils.flop_counter (a multiply-add counts 2), used by the
``efficiency`` labels, the zero-shot FLOP calculator and WeightNet's probe-cost limit alike."""
from __future__ import annotations

from typing import Mapping

import torch


def example_input(arch_config: Mapping, batch: int = 1) -> torch.Tensor:
    """Zeros shaped like ``batch`` examples of the architecture's input (token ids for ``input_dtype=long``)."""
    shape = tuple(int(d) for d in arch_config["input_shape"])
    dtype = torch.long if arch_config.get("input_dtype") == "long" else torch.float32
    return torch.zeros((batch, *shape), dtype=dtype)


def count_flops(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``module`` on ``example`` (no gradients are recorded)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(example)
    return int(counter.get_total_flops())
