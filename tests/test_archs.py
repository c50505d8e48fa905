"""Every registered architecture: builds, runs, trains a step, round-trips through the store, and its
spec's permutations are exact symmetries (while a coupling-breaking permutation is not)."""
from __future__ import annotations

import pytest
import torch

from core.errors import BadWeights, UnknownEntry
from core.spec import LAYER_KINDS, WeightSpec, permute, random_perms
from fixtures.symmetry import break_coupling, perturbed
from zoo.archs import ARCHS, build, load_module

IMAGE = {"input_shape": [1, 8, 8], "n_classes": 10}
SEQUENCE = {"input_shape": [1, 40], "n_classes": 10}  # MNIST-1D
# the smallest config of each entry; an entry missing here is tested with IMAGE
BASE = {
    "mlp": {**IMAGE, "width": 8, "depth": 2},
    "cnn": {**IMAGE, "channels": 6, "n_layers": 3},
    "wildcnn": {**IMAGE, "channels": [4, 6, 6], "kernel_sizes": [3, 5, 7], "activation": "gelu"},
    "transformer": {"input_shape": [1, 12], "n_classes": 3, "hidden_size": 8, "n_heads": 2, "intermediate_size": 8},
    "vit": {**IMAGE, "embed_dim": 8, "num_heads": 2, "depth": 2},
    # outside architectures: specs inferred from the traced graph (zoo.archs.outside)
    "torchvision": {"input_shape": [3, 16, 16], "n_classes": 4, "name": "resnet18", "kwargs": {"num_classes": 4}},
    "timm_model": {"input_shape": [3, 16, 16], "n_classes": 4, "name": "test_efficientnet", "kwargs": {"num_classes": 4}},
    "hf_model": {"input_shape": [6], "n_classes": 3, "input": "tokens", "vocab_size": 30,
                 "class": "DistilBertForSequenceClassification",
                 "hf_config": {"model_type": "distilbert", "vocab_size": 30, "dim": 8, "n_layers": 1, "n_heads": 2,
                               "hidden_dim": 16, "max_position_embeddings": 8, "num_labels": 3}},
    "module": {**IMAGE, "factory": "zoo.archs.basic:MLP", "kwargs": {"in_features": 64, "width": 8, "depth": 2,
                                                                   "n_classes": 10, "act": "tanh", "dropout": 0.0}},
    "cnn1d": {**SEQUENCE, "channels": 6, "n_layers": 3, "kernel_size": 5},
    "wildcnn1d": {**SEQUENCE, "channels": [4, 6, 6], "kernel_sizes": [3, 5, 7], "strides": [2, 1, 1],
                  "activation": "gelu"},
}


def _program() -> dict:
    """The ``exported`` entry rebuilds a torch.export program from disk: write a tiny one."""
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="zoo-pt2-")) / "mlp.pt2"
    torch.manual_seed(0)
    m = build("mlp", {**IMAGE, "width": 8, "depth": 2}).module.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    torch.export.save(torch.export.export(m, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), path)
    return {**IMAGE, "path": str(path)}


BASE["exported"] = _program()
VARIANTS = [
    ("wildcnn", {**IMAGE, "channels": [4, 5, 5, 5], "kernel_sizes": [3, 3, 5, 3], "residual": True, "norm": "batch",
                 "activation": "silu"}),
    ("wildcnn", {**IMAGE, "channels": [5, 5, 4], "kernel_sizes": [7, 3, 3], "residual": True, "norm": "layer",
                 "activation": "tanh"}),
    ("wildcnn1d", {**SEQUENCE, "channels": [4, 5, 5, 5], "kernel_sizes": [3, 3, 5, 3], "strides": [1, 1, 1, 2],
                   "residual": True, "norm": "batch", "activation": "silu"}),
    ("wildcnn1d", {**SEQUENCE, "channels": [5, 5, 4], "kernel_sizes": [7, 3, 3], "strides": [1, 1, 1],
                   "residual": True, "norm": "layer", "activation": "tanh"}),
    ("resnet", {**IMAGE, "block": "bottleneck", "channels": [2, 4, 4, 4]}),
    ("resnet", {"input_shape": [3, 8, 8], "n_classes": 4, "stem_type": ""}),
    ("vit", {"input_shape": [3, 8, 8], "n_classes": 5, "global_pool": "avg", "patch_size": 4, "embed_dim": 8}),
    ("transformer", {"input_shape": [6], "n_classes": 2, "input": "tokens", "vocab_size": 11, "hidden_size": 8}),
]


def sampled_wildcnns(seeds: range) -> list[tuple[str, dict]]:
    """Configs exactly as the wildcnn family samples them (up to 6 layers, 64 channels, 7x7 kernels)."""
    from zoo.sampling import WildCNNSpace, sample_wildcnn

    return [("wildcnn", sample_wildcnn(WildCNNSpace(), s, (1, 8, 8), 10)) for s in seeds]


def sampled_benchmark_wilds(seeds: range) -> list[tuple[str, dict]]:
    """Configs exactly as the benchmark wild families sample them (1-D on MNIST-1D, 2-D on digits)."""
    from zoo.families import DIGITS_WILD_SPACE, WILD1D_SPACE
    from zoo.sampling import sample_wildcnn, sample_wildcnn1d

    return ([("wildcnn1d", sample_wildcnn1d(WILD1D_SPACE, s, (1, 40), 10)) for s in seeds]
            + [("wildcnn", sample_wildcnn(DIGITS_WILD_SPACE, s, (1, 8, 8), 10)) for s in seeds])


CASES = ([(name, BASE.get(name, IMAGE)) for name in ARCHS.names()] + VARIANTS + sampled_wildcnns(range(3))
         + sampled_benchmark_wilds(range(3)))
IDS = [f"{a}-{i}" for i, (a, _) in enumerate(CASES)]


def example_input(config: dict, n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if config.get("input") == "tokens":
        return torch.randint(0, int(config["vocab_size"]), (n, *config["input_shape"]), generator=g)
    return torch.rand(n, *config["input_shape"], generator=g)


def logits(arch: str, config: dict, state: dict, x: torch.Tensor) -> torch.Tensor:
    m = build(arch, config).module
    m.load_state_dict(state)
    with torch.no_grad():
        return m.eval()(x)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,config", CASES, ids=IDS)
def test_builds_and_forwards(arch: str, config: dict) -> None:
    out = build(arch, config).module.eval()(example_input(config))
    assert out.shape == (5, config["n_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch,config", CASES, ids=IDS)
def test_spec_covers_every_state_entry(arch: str, config: dict) -> None:
    built = build(arch, config)
    state = built.module.state_dict()
    spec = built.spec
    assert [p.name for p in spec.params] == list(state)
    assert all(p.kind in LAYER_KINDS for p in spec.params)
    spec.validate(state)
    assert WeightSpec.from_json(spec.to_json()) == spec
    trainable = sum(p.numel() for p in built.module.parameters())
    assert spec.n_params == trainable
    # a hidden group is used by at least two tensors (producer and consumer), so permuting it is meaningful
    for g in spec.groups:
        assert sum(g.name in p.axes for p in spec.params) >= 2, g.name


@pytest.mark.parametrize("arch,config", CASES, ids=IDS)
def test_one_training_step_changes_weights(arch: str, config: dict) -> None:
    torch.manual_seed(0)
    m = build(arch, config).module.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = example_input(config, n=8)
    y = torch.arange(8) % config["n_classes"]
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and any("weight" in k for k in changed)


@pytest.mark.parametrize("arch,config", CASES, ids=IDS)
def test_store_round_trip_gives_identical_logits(arch: str, config: dict, lake) -> None:
    from storage.writes import ModelRecord, read_models, read_weights, write_models

    built = build(arch, config)
    state = perturbed(built.module.state_dict())
    rec = ModelRecord(model_id=f"{arch}-rt", family="test", arch=arch, arch_config=config, dataset="none",
                      spec=built.spec)
    write_models(lake, [(rec, state)], "round trip")
    stored = read_models(lake)[0]
    back = read_weights(lake, [rec.model_id])[rec.model_id]
    x = example_input(config)
    module = load_module(stored, back)
    assert not module.training
    with torch.no_grad():
        assert torch.equal(module(x), logits(arch, config, state, x))


@pytest.mark.parametrize("arch,config", CASES, ids=IDS)
def test_spec_permutations_are_symmetries(arch: str, config: dict, rng: torch.Generator) -> None:
    torch.manual_seed(0)  # timm/HF constructors draw from the global RNG: an init independent of test order
    built = build(arch, config)
    state = perturbed(built.module.state_dict())
    x = example_input(config)
    ref = logits(arch, config, state, x)
    # all groups at once, then each group alone (a wrongly coupled group cannot hide behind another)
    assert_same(logits(arch, config, permute(state, built.spec, random_perms(built.spec, rng)), x), ref)
    for g in built.spec.groups:
        if g.size > 1:
            moved = permute(state, built.spec, random_perms(built.spec, rng, [g.name]))
            assert_same(logits(arch, config, moved, x), ref)
    broken = logits(arch, config, break_coupling(state, built.spec, rng), x)
    assert (broken - ref).abs().max() > 1e-4


def test_load_module_refuses_a_state_that_does_not_fit() -> None:
    from storage.writes import ModelRecord

    config = BASE["mlp"]
    built = build("mlp", config)
    rec = ModelRecord("x", "test", "mlp", config, "none", built.spec)
    state = built.module.state_dict()
    state["layers.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(BadWeights, match="x"):
        load_module(rec, state)


def test_bad_arch_configs_are_refused_by_name() -> None:
    with pytest.raises(UnknownEntry, match="nope"):
        build("nope", IMAGE)
    with pytest.raises(UnknownEntry, match="norm"):
        build("wildcnn", {**IMAGE, "norm": "weird"})
    with pytest.raises(UnknownEntry, match="stages"):
        build("resnet", {**IMAGE, "layers": [1, 1]})


def test_small_cnn_zoo_shape_has_4970_parameters() -> None:
    assert build("cnn", {**IMAGE, "channels": 16, "n_layers": 3}).spec.n_params == 4970


def test_wildcnn_residual_chain_shares_one_channel_group() -> None:
    spec = build("wildcnn", VARIANTS[0][1]).spec
    assert spec.param("convs.2.weight").axes[0] == spec.param("convs.3.weight").axes[0] == "c1"
    assert spec.param("norms.3.running_mean").axes == ("c1",)
