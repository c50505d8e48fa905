"""Spec inference from the traced graph (core.infer): it reproduces the hand-written specs of the
registered architectures, and on 19 real architectures (torchvision, timm, transformers; random weights,
built offline) permuting every inferred group leaves the outputs unchanged while break_coupling does not."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from core.infer import infer, infer_spec
from core.infer.compare import canonical, differences
from core.spec import WeightSpec, permute, random_perms
from fixtures.symmetry import break_coupling, perturbed
from fixtures.real_models import REAL
from zoo.archs import build
from zoo.archs.outside import example_input

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # two threads on a loaded 2-core box spin for minutes

# the registered architectures with hand-written specs, at the configs test_archs uses
IMAGE = {"input_shape": [1, 8, 8], "n_classes": 10}
HANDWRITTEN = [
    ("mlp", {**IMAGE, "width": 8, "depth": 2}),
    ("cnn", {**IMAGE, "channels": 6, "n_layers": 3}),
    ("wildcnn", {**IMAGE, "channels": [4, 6, 6], "kernel_sizes": [3, 5, 7], "activation": "gelu"}),
    ("wildcnn", {**IMAGE, "channels": [4, 5, 5, 5], "kernel_sizes": [3, 3, 5, 3], "residual": True, "norm": "batch"}),
    ("wildcnn", {**IMAGE, "channels": [5, 5, 4], "kernel_sizes": [7, 3, 3], "residual": True, "norm": "layer"}),
    ("resnet", IMAGE),
    ("resnet", {**IMAGE, "block": "bottleneck", "channels": [2, 4, 4, 4]}),
    ("resnet", {"input_shape": [3, 8, 8], "n_classes": 4, "stem_type": ""}),
    ("vit", {**IMAGE, "embed_dim": 8, "num_heads": 2, "depth": 2}),
    ("vit", {"input_shape": [3, 8, 8], "n_classes": 5, "global_pool": "avg", "patch_size": 4, "embed_dim": 8}),
    ("transformer", {"input_shape": [6], "n_classes": 2, "input": "tokens", "vocab_size": 11, "hidden_size": 8}),
    ("transformer", {"input_shape": [1, 12], "n_classes": 3, "hidden_size": 8, "n_heads": 2, "intermediate_size": 8}),
]


def handwritten_input(config: dict) -> torch.Tensor:
    if config.get("input") == "tokens":
        return torch.randint(0, int(config["vocab_size"]), (2, *config["input_shape"]))
    return torch.rand(2, *config["input_shape"])


@pytest.mark.parametrize("arch,config", HANDWRITTEN, ids=[f"{a}-{i}" for i, (a, _) in enumerate(HANDWRITTEN)])
def test_inferred_spec_equals_the_handwritten_one(arch: str, config: dict) -> None:
    built = build(arch, config)
    got = infer(built.module, (handwritten_input(config),))
    expected, spec = built.spec, got.spec
    if got.unused:  # the features-input transformer never reads its word embeddings: inference leaves them fixed
        assert got.unused == ("bert.embeddings.word_embeddings.weight",)
        assert spec.param(got.unused[0]).axes == (None, None)
        spec, expected = (WeightSpec(tuple(p for p in s.params if p.name not in got.unused), s.groups)
                          for s in (spec, expected))
    assert differences(spec, expected) == []
    assert canonical(spec) == canonical(expected)


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    scale = max(float(b.abs().max()), 1e-30)
    assert float((a - b).abs().max()) <= rel * scale, f"{float((a - b).abs().max())} vs scale {scale}"


def real_input(arch: str, config: dict) -> torch.Tensor:
    tokens = arch == "hf_model" and len(config["input_shape"]) == 1
    return example_input("tokens" if tokens else "values", config["input_shape"], n=2, dtype=torch.float64)


@pytest.mark.parametrize("arch,config", [r[1:] for r in REAL], ids=[r[0] for r in REAL])
def test_real_architecture_permutations_are_symmetries(arch: str, config: dict) -> None:
    """float64 so the tolerance is tight: outputs agree to 1e-9 of their scale; a broken coupling moves them."""
    built = build(arch, config)
    spec = built.spec
    assert spec.groups, "no permutation group found"
    m = built.module.double().eval()
    state = perturbed(m.state_dict())
    x = real_input(arch, config)

    def run(s: dict) -> torch.Tensor:
        m.load_state_dict(s)
        with torch.no_grad():
            return m(x)

    ref = run(state)
    g = torch.Generator().manual_seed(0)
    assert_close_rel(run(permute(state, spec, random_perms(spec, g))), ref, 1e-9)
    sizable = [grp.name for grp in spec.groups if grp.size > 1]
    for name in sizable[:: max(1, len(sizable) // 8)]:  # up to ~8 groups alone: a wrong one cannot hide
        assert_close_rel(run(permute(state, spec, random_perms(spec, g, [name]))), ref, 1e-9)
    # break the coupling nearest the output (deep random nets barely react to their first layers)
    broken = run(break_coupling(state, WeightSpec(spec.params, tuple(reversed(spec.groups))), g))
    assert float((broken - ref).abs().max()) > 1e-3 * float(ref.abs().max())


def by_name(spec, name: str):
    return spec.param(name)


def test_attention_heads_are_blocks_of_head_dim() -> None:
    arch, config = next((a, c) for i, a, c in REAL if i == "transformers/bert")
    spec = build(arch, config).spec
    q = spec.param("bert.encoder.layer.0.attention.self.query.weight")
    o = spec.param("bert.encoder.layer.0.attention.output.dense.weight")
    assert q.kind == "attn_q" and o.kind == "attn_o"
    assert q.blocks == (8, 1) and o.blocks == (1, 8)  # 2 heads of 8 features
    assert q.axes[0] == o.axes[1] and spec.group_size(q.axes[0]) == 2
    assert q.axes[1] == o.axes[0]  # the residual stream


class Grouped(nn.Module):
    """A grouped conv (2 groups), then a conv reading its channels, a channel concat and a sort."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 6, 1)
        self.g = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.b = nn.Conv2d(6, 3, 1)
        self.c = nn.Conv2d(6, 2, 1)
        self.head = nn.Linear(9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.g(torch.relu(self.a(x)))
        y = torch.cat([self.b(h), self.c(h).sort(dim=1).values, torch.zeros_like(x)], 1)
        return self.head(y.mean((2, 3)))


def test_grouped_conv_concat_and_unknown_ops_are_handled_conservatively() -> None:
    spec = infer_spec(Grouped(), (torch.rand(2, 4, 5, 5),))
    a, g, b = spec.param("a.weight"), spec.param("g.weight"), spec.param("b.weight")
    # g's input and output channels move in whole conv groups (2 groups, blocks of 3), channels inside stay
    assert a.axes[0] == g.axes[0] == b.axes[1] and spec.group_size(a.axes[0]) == 2
    assert a.blocks[0] == g.blocks[0] == b.blocks[1] == 3 and g.axes[1] is None
    # b and c outputs are concatenated along channels: fixed; c's outputs are also sorted: fixed
    assert spec.param("b.weight").axes[0] is None and spec.param("c.weight").axes[0] is None
    assert spec.param("head.weight").axes == (None, None)
