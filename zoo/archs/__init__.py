"""Architecture registry (timm style). Every entry builds a module AND its weight-space spec.

    @ARCHS.register("mlp")
    def mlp(config: dict) -> Built: ...

``config`` always holds ``input_shape`` (one example) and ``n_classes`` besides the architecture's
own knobs, so ``build(arch, config)`` alone rebuilds any stored model, and ``load_module(record, state)``
rebuilds any stored model (trained, or ingested from the hub, timm or a file) in eval mode.

Spec group-naming conventions (a group names the units that permute together; two axes naming the
same group must be permuted with the same permutation):

- ``mlp``: ``h{i}``: hidden neurons of layer ``i``.
- ``cnn``: ``c{i}``: output channels of conv layer ``i``.
- ``cnn1d`` / ``wildcnn1d`` (zoo.archs.conv1d): as ``cnn`` / ``wildcnn``, over sequences (N, C, L).
- ``wildcnn``: ``c{i}``: channels of conv layer ``i``, carried by its conv (out axis), its norm's
  weight/bias/running stats, and the next layer's in axis. A residual chain (consecutive layers with
  equal channel counts, ``residual=True``) shares the group of the chain's first layer.
- ``resnet`` (timm ResNet, 'deep' 3-conv stem by default): ``stem{j}`` (inner stem convs' channels),
  ``stem`` (the stem's output channels, when the first block re-projects them; else they are
  ``stage0.stream``),
  ``stage{s}.stream`` (the residual stream of stage ``s``: every block output, the downsample output,
  the stage's input projection), ``stage{s}.block{b}.mid`` (BasicBlock inner channels) or
  ``.mid1``/``.mid2`` (Bottleneck inner channels).
- ``vit`` (timm VisionTransformer with split q/k/v projections): ``residual`` (the residual stream:
  patch embedding out axis, cls token, position embedding, every LayerNorm, every residual-writing
  projection's out axis and every reading projection's in axis, the head's in axis),
  ``blocks.{i}.heads`` (attention heads; acts in blocks of head_dim on q/k/v out axes and on the output
  projection's in axis), ``blocks.{i}.mlp`` (MLP hidden neurons).
- ``transformer`` (Hugging Face BERT encoder + classifier): ``residual`` (embeddings, every LayerNorm,
  residual-writing/-reading projections, the feature input projection), ``layer.{i}.heads``,
  ``layer.{i}.ffn`` (intermediate neurons), ``pooler`` (pooler neurons read by the classifier).

Axes never permuted (``None``): input features/pixels/channels, classes, kernel taps, token positions,
vocabulary rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import torch

from core.errors import BadWeights
from core.registry import Registry
from core.spec import WeightSpec

if TYPE_CHECKING:
    from storage.writes import ModelRecord

ARCHS: Registry = Registry("architecture")


@dataclass(frozen=True)
class Built:
    module: torch.nn.Module
    spec: WeightSpec


def build(arch: str, config: Mapping) -> Built:
    return ARCHS.get(arch)(dict(config))


def load_module(record: "ModelRecord", state: Mapping[str, torch.Tensor], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a stored model (any source: its arch + arch_config were recorded at build/ingest) in eval
    mode with ``state`` loaded. A state that does not fit the architecture raises ``BadWeights``."""
    built = build(record.arch, record.arch_config)
    try:
        built.module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise BadWeights(f"model {record.model_id}: weights do not fit {record.arch}: {' '.join(first[:3])}") from None
    return built.module.to(device).eval()


from zoo.archs import basic, conv1d, hf, outside, timm_models, wild  # noqa: E402,F401  (fill the registry)
