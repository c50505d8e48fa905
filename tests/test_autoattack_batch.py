"""AutoAttack on many models in one run (issue 4): rows carry their model index in a tag channel.

The routed module must compute exactly each model's own logits whatever subset, order or Linf move
of eps the attack applies to the rows; the tag must be invisible to gradients; a corrupted tag must
raise instead of misrouting; and the batched labels must measure what the model-by-model loop measures.
"""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import labeling  # noqa: F401  (fills the registry)
from labeling.attacks import AutoAttackParams, autoattack, autoattack_name
from labeling.population import Population, load_module, tile
from labeling.registry import PROPERTIES, ModelBatch
from labeling.routing import Routed, RoutingError, decode_tags, encode_tags, tag_code
from zoo.archs import build
from zoo.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CPU = torch.device("cpu")
EPS = 8 / 255
CONFIG = {"input_shape": [1, 8, 8], "n_classes": 10, "channels": 6, "n_layers": 2}


def cnns(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)  # test-only: module init draws from the global RNG
        out.append(build("cnn", CONFIG).module.eval())
    return out


def routed_population(n: int, stack: bool) -> tuple[Routed, torch.Tensor, torch.Tensor]:
    """(routed module of n CNNs, tagged rows (n*N, 2, 8, 8), model index of each row)."""
    pop = Population(cnns(n), (1, 8, 8), stack=stack)
    assert pop.stacked == (stack and n > 1)
    routed = Routed(pop, tag_code(n, EPS, 64))
    u = load_dataset("digits", 0).x_test[:12]  # digits values are already in [0, 1]
    index = torch.arange(n).repeat_interleave(len(u))
    return routed, routed.tag(tile(u, n), index), index


def assert_rows_match_their_models(routed: Routed, rows: torch.Tensor, index: torch.Tensor) -> None:
    got = routed(rows)
    for r in range(len(rows)):
        want = routed.pop.members[int(index[r])](rows[r:r + 1, :1])
        assert torch.allclose(got[r:r + 1], want, atol=1e-5, rtol=1e-5), f"row {r} (model {int(index[r])})"


def batch_of(models) -> ModelBatch:
    recs, states = zip(*models)
    return ModelBatch(tuple(recs), tuple(load_module(r, s) for r, s in models), tuple(states))


# --- the tag code ---------------------------------------------------------------------------------
def test_tag_levels_round_trip_and_stay_apart_by_four_eps():
    for n in (1, 2, 7, 8, 9, 64, 200):
        code = tag_code(n, EPS, 64)
        assert code.spacing >= 4 * code.tolerance and code.base ** code.n_digits >= n
        tags = encode_tags(torch.arange(n), code)
        assert tags.min() >= 0 and tags.max() <= 1
        assert torch.equal(decode_tags(tags, code), torch.arange(n))
    assert tag_code(9, EPS, 64).n_digits == 2  # base 8 at eps 8/255: several digits are exercised
    with pytest.raises(RoutingError, match="eps 0.3 is too large"):
        tag_code(4, 0.3, 64)
    with pytest.raises(RoutingError, match="only 1 pixels"):
        tag_code(9, EPS, 1)


# --- the routed forward ---------------------------------------------------------------------------
@pytest.mark.parametrize("stack", [True, False])
def test_routed_rows_get_their_own_models_logits_after_subsets_permutations_and_eps_moves(stack):
    routed, rows, index = routed_population(9, stack)
    assert torch.allclose(routed(rows), routed.pop(rows[:, :1]), atol=1e-5)  # block order: as the Population
    assert routed(rows[:0]).shape == (0, 10)
    g = torch.Generator().manual_seed(0)
    for size in (len(rows), 40, 3, 1):  # attacks pass on shrinking subsets of rows, in any order
        pick = torch.randperm(len(rows), generator=g)[:size]
        assert_rows_match_their_models(routed, rows[pick], index[pick])
    move = EPS * torch.sign(torch.rand(rows.shape, generator=g) - 0.5)  # +-eps everywhere, the tag included
    moved = (rows + move).clamp(0, 1)
    assert (moved[:, 1] != rows[:, 1]).any()
    pick = torch.randperm(len(rows), generator=g)[:50]
    assert_rows_match_their_models(routed, moved[pick], index[pick])


def test_gradient_never_reaches_the_tag():
    routed, rows, _ = routed_population(3, stack=True)
    rows = rows.clone().requires_grad_()
    torch.nn.functional.cross_entropy(routed(rows), torch.zeros(len(rows), dtype=torch.long)).backward()
    assert torch.equal(rows.grad[:, 1], torch.zeros_like(rows.grad[:, 1]))
    assert rows.grad[:, 0].abs().sum() > 0  # the real channel does get a gradient


def test_corrupted_tags_raise_instead_of_misrouting():
    routed, rows, _ = routed_population(9, stack=True)
    code = routed.code
    moved = rows.clone()
    moved[5, 1, 0, 0] += 2 * EPS  # beyond the tolerance, though it still rounds to its level
    with pytest.raises(RoutingError, match=r"row 5 has a corrupted model tag .*index 0 of 9 models, a pixel 0.06275"):
        routed(moved)
    invalid = rows.clone()
    invalid[7, 1] = (code.base - 1) * code.spacing  # every digit at its top level: index 63 of 9 models
    with pytest.raises(RoutingError, match=r"row 7 .*index 63 of 9 models, out of range"):
        routed(invalid)
    mixed = rows.clone()
    mixed[2, 1, 7, 7] = 1.0  # one pixel disagrees with the other copies of its digit
    with pytest.raises(RoutingError, match=r"row 2 .*index 0 of 9 models, a pixel 1 away"):
        routed(mixed)


# --- the AutoAttack property ----------------------------------------------------------------------
def test_batched_autoattack_measures_what_the_model_by_model_loop_measures(tiny_digits_models):
    sp = load_dataset("digits", 0)
    b = batch_of(tiny_digits_models[:3])  # three CNNs of one config, trained for 60, 60 and 15 epochs
    prop = PROPERTIES.get("autoattack")
    params = prop.resolve_params(sp, AutoAttackParams(n_examples=40, n_queries=100))
    name = autoattack_name(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to one by one would warn: the routed path must run
        batched = autoattack(b, sp, params, CPU, torch.Generator().manual_seed(0))
    loop = autoattack(b, sp, dataclasses.replace(params, batch_models=False), CPU, torch.Generator().manual_seed(0))
    for d_batched, d_loop in zip(batched, loop):
        assert d_batched[f"{name}_clean"] == d_loop[f"{name}_clean"]
        assert 0 <= d_batched[name] <= d_batched[f"{name}_clean"]
    diffs = [abs(a[name] - c[name]) for a, c in zip(batched, loop)]
    assert sum(diffs) / len(diffs) <= 0.05, diffs  # other random draws, the same quantity
    assert any(0 < d[name] < d[f"{name}_clean"] for d in loop)  # the attack breaks some examples, not all


def test_chunks_of_models_and_fallbacks_give_the_loops_numbers(tiny_digits_models):
    """Chunks of one model, eps too large for tags, and L2 all run model by model: exactly the loop."""
    sp = load_dataset("digits", 0)
    b = batch_of(tiny_digits_models[:2])
    prop = PROPERTIES.get("autoattack")
    small = dict(n_examples=10, n_queries=10)
    cases = [AutoAttackParams(models_per_run=1, **small), AutoAttackParams(norm="L2", eps=0.5, **small)]
    for params in cases:
        params = prop.resolve_params(sp, params)
        loop = autoattack(b, sp, dataclasses.replace(params, batch_models=False), CPU, torch.Generator().manual_seed(0))
        assert autoattack(b, sp, params, CPU, torch.Generator().manual_seed(0)) == loop
    params = prop.resolve_params(sp, AutoAttackParams(eps=0.3, **small))
    loop = autoattack(b, sp, dataclasses.replace(params, batch_models=False), CPU, torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="eps 0.3 is too large.*one by one"):
        assert autoattack(b, sp, params, CPU, torch.Generator().manual_seed(0)) == loop
