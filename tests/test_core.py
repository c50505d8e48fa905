"""The shared contracts: weight-space specs, permutations, registries, stable ids."""
from __future__ import annotations

import pytest
import torch

from core.errors import BadWeights, UnknownEntry
from core.hashing import stable_hash
from core.registry import Registry
from core.spec import ParamSpec, PermGroup, WeightSpec, permute, random_perms
from fixtures.symmetry import break_coupling


def _two_layer_spec(hidden: int = 5) -> WeightSpec:
    return WeightSpec(
        params=(
            ParamSpec("l0.weight", (hidden, 3), "linear", "weight", 0, ("h", None)),
            ParamSpec("l0.bias", (hidden,), "linear", "bias", 0, ("h",)),
            ParamSpec("l1.weight", (2, hidden), "linear", "weight", 1, (None, "h")),
        ),
        groups=(PermGroup("h", hidden),),
    )


def _forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ state["l0.weight"].T + state["l0.bias"]) @ state["l1.weight"].T


def test_permutation_preserves_function_and_breaking_it_does_not(rng: torch.Generator) -> None:
    spec = _two_layer_spec()
    state = {p.name: torch.randn(p.shape, generator=rng) for p in spec.params}
    x = torch.randn(7, 3, generator=rng)
    permuted = permute(state, spec, random_perms(spec, rng))
    assert not torch.equal(permuted["l0.weight"], state["l0.weight"])
    torch.testing.assert_close(_forward(permuted, x), _forward(state, x))
    broken = break_coupling(state, spec, rng)
    assert (_forward(broken, x) - _forward(state, x)).abs().max() > 1e-3


def test_block_axes_move_whole_blocks() -> None:
    spec = WeightSpec(
        params=(ParamSpec("w", (6, 2), "linear", "weight", 0, ("heads", None), (3, 1)),),
        groups=(PermGroup("heads", 2),),
    )
    w = torch.arange(12.0).reshape(6, 2)
    out = permute({"w": w}, spec, {"heads": torch.tensor([1, 0])})["w"]
    assert torch.equal(out, torch.cat([w[3:], w[:3]]))


def test_spec_json_round_trip_and_validation() -> None:
    spec = _two_layer_spec()
    assert WeightSpec.from_json(spec.to_json()) == spec
    assert spec.n_params == 5 * 3 + 5 + 2 * 5
    good = {p.name: torch.zeros(p.shape) for p in spec.params}
    spec.validate(good)
    with pytest.raises(BadWeights, match="l0.weight.*shape"):
        spec.validate({**good, "l0.weight": torch.zeros(4, 3)})
    with pytest.raises(BadWeights, match="l0.bias.*NaN"):
        spec.validate({**good, "l0.bias": torch.full((5,), float("nan"))})
    with pytest.raises(BadWeights, match="extra"):
        spec.validate({**good, "extra": torch.zeros(1)})
    with pytest.raises(BadWeights, match="missing"):
        spec.validate({k: v for k, v in good.items() if k != "l1.weight"})


def test_spec_refuses_inconsistent_declarations() -> None:
    with pytest.raises(BadWeights, match="unknown layer kind"):
        ParamSpec("w", (2,), "lstm", "weight", 0, (None,))
    with pytest.raises(BadWeights, match="group 'h'"):
        WeightSpec((ParamSpec("w", (4, 2), "linear", "weight", 0, ("h", None)),), (PermGroup("h", 3),))
    with pytest.raises(BadWeights, match="unknown permutation group"):
        WeightSpec((ParamSpec("w", (4, 2), "linear", "weight", 0, ("g", None)),), ())


def test_registry_names_unknown_entries() -> None:
    reg: Registry = Registry("widget")

    @reg.register("a")
    def a() -> int:
        return 1

    assert reg.get("a")() == 1 and reg.names() == ["a"] and "a" in reg
    with pytest.raises(UnknownEntry, match="unknown widget 'b' \\(known: a\\)"):
        reg.get("b")
    with pytest.raises(ValueError):
        reg.register("a")(a)


def test_stable_hash_is_order_independent_and_sensitive() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x")) == 16
