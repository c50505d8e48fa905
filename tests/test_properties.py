"""Numbers that labels must get right (issue 4, section 5): hand-computed values, library cross-checks,
monotonicity in attack strength and corruption severity, symmetries of the weight space."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import labeling  # noqa: F401  (fills the registry)
from core.flops import count_flops
from core.spec import permute, random_perms
from labeling.attacks import AutoAttackParams, PGDParams, autoattack, eps_name, pgd
from labeling.corruption_robustness import CorruptionParams, corruption_robustness
from labeling.corruptions import CORRUPTIONS, corrupt, corrupted_test_set
from labeling.performance import fairness, fairness_values, performance
from labeling.population import Population, load_module, population_logits
from labeling.registry import PROPERTIES, ModelBatch, PerExample
from labeling.weightstats import WeightStatsParams, matrix_stats, weight_stats
from zoo.archs import build
from zoo.datasets import DatasetInfo, Splits, load_dataset

CPU = torch.device("cpu")


def batch_of(models) -> ModelBatch:
    recs, states = zip(*models)
    return ModelBatch(tuple(recs), tuple(load_module(r, s) for r, s in models), tuple(states))


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class Constant(nn.Module):
    """Always predicts ``cls`` (logits one-hot * 5) whatever the input."""

    def __init__(self, cls: int, n_classes: int):
        super().__init__()
        self.bias = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(cls), n_classes).float() * 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def toy_splits() -> Splits:
    """Binary tabular task with one sensitive feature ``sex`` (groups 0/1)."""
    info = DatasetInfo("toy", "tabular", (3,), 2, (-3.0, 3.0), sensitive=("sex",))
    y = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
    sex = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    x = torch.linspace(-2, 2, 30).reshape(10, 3)
    return Splits(info, x, y, x, y, x, y, sensitive={s: {"sex": sex} for s in ("train", "val", "test")})


# --- performance and fairness on a constant model ------------------------------------------------
def test_constant_model_gets_hand_computed_accuracy_f1_and_fairness():
    sp = toy_splits()
    b = ModelBatch((None, None), (Constant(1, 2), Constant(0, 2)), ({}, {}))  # records unused by these
    perf = performance(b, sp, PERFORMANCE_PARAMS, CPU, gen())
    p = 4 / 10  # share of class 1
    assert perf[0]["test_accuracy"] == pytest.approx(p)
    assert perf[1]["test_accuracy"] == pytest.approx(1 - p)
    # macro F1 over the classes present: the predicted class has F1 = 2p/(1+p), the other 0
    assert perf[0]["test_f1"] == pytest.approx((2 * p / (1 + p)) / 2)
    assert perf[1]["test_f1"] == pytest.approx((2 * (1 - p) / (2 - p)) / 2)
    # loss: logits (0, 5) -> -log softmax
    lse = torch.logsumexp(torch.tensor([0.0, 5.0]), 0)
    assert perf[0]["test_loss"] == pytest.approx(float(p * (lse - 5) + (1 - p) * lse))
    assert perf[0]["gen_gap_accuracy"] == pytest.approx(0.0) and perf[0]["gen_gap_loss"] == pytest.approx(0.0)
    # per test example, whether the model got it right: the constant-1 model exactly where y is 1
    assert perf[0]["test_correct"].values.tolist() == (sp.split("test")[1] == 1).tolist()
    assert perf[1]["test_correct"].values.tolist() == (sp.split("test")[1] == 0).tolist()
    assert "train_correct" not in perf[0]  # only the test split's outcome is kept
    fair = fairness(b, sp, PROPERTIES.get("fairness").params, CPU, gen())
    # everyone gets class 1: equal selection rates and equal TPR/FPR across groups -> 0 differences
    assert fair[0]["fairness_dp_diff_sex"] == pytest.approx(0.0)
    assert fair[0]["fairness_eo_diff_sex"] == pytest.approx(0.0)
    # group 0 holds labels (1,1,1,0,0): accuracy 3/5; group 1 holds (1,0,0,0,0): 1/5
    assert fair[0]["fairness_acc_sex_0"] == pytest.approx(0.6)
    assert fair[0]["fairness_acc_sex_1"] == pytest.approx(0.2)
    assert fair[0]["fairness_acc_diff_sex"] == pytest.approx(0.4)


PERFORMANCE_PARAMS = PROPERTIES.get("performance").params


def test_generalization_gap_signs():
    sp = toy_splits()
    flipped = dataclasses.replace(sp, y_test=1 - sp.y_test)  # the constant model is worse on test
    b = ModelBatch((None,), (Constant(1, 2),), ({},))
    d = performance(b, flipped, PERFORMANCE_PARAMS, CPU, gen())[0]
    assert d["gen_gap_accuracy"] == pytest.approx(d["train_accuracy"] - d["test_accuracy"]) and d["gen_gap_accuracy"] < 0
    assert d["gen_gap_loss"] == pytest.approx(d["test_loss"] - d["train_loss"])


def test_fairness_hand_computed_selection_rates():
    y_true = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])
    y_pred = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    d = fairness_values(y_true, y_pred, {"a": g}, 2)
    assert d["fairness_dp_diff_a"] == pytest.approx(0.5 - 0.25)  # selection rates 2/4 vs 1/4
    # TPR 1/2 vs 1/2; FPR 1/2 vs 0 -> equalized odds difference = max(0, 1/2)
    assert d["fairness_eo_diff_a"] == pytest.approx(0.5)


def test_fairness_matches_direct_fairlearn_call():
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    sp = toy_splits()
    torch.manual_seed(3)
    model = nn.Linear(3, 2)
    b = ModelBatch((None,), (model.eval(),), ({},))
    got = fairness(b, sp, PROPERTIES.get("fairness").params, CPU, gen())[0]
    pred = model(sp.x_test).argmax(-1).numpy()
    s = sp.sensitive["test"]["sex"].numpy()
    assert got["fairness_dp_diff_sex"] == pytest.approx(demographic_parity_difference(sp.y_test.numpy(), pred, sensitive_features=s))
    assert got["fairness_eo_diff_sex"] == pytest.approx(equalized_odds_difference(sp.y_test.numpy(), pred, sensitive_features=s))


# --- populations --------------------------------------------------------------------------------
def test_population_matches_models_one_by_one_and_follows_their_order(tiny_digits_models):
    sp = load_dataset("digits", 0)
    cnns = tiny_digits_models[:3]
    b = batch_of(cnns)
    pop = Population(b.modules, sp.info.input_shape)
    assert pop.stacked
    logits = population_logits(pop, sp.x_test)
    for i, m in enumerate(b.modules):
        torch.testing.assert_close(logits[i], m(sp.x_test).detach(), atol=1e-5, rtol=1e-5)
    rev = performance(batch_of(cnns[::-1]), sp, PERFORMANCE_PARAMS, CPU, gen())
    fwd = performance(b, sp, PERFORMANCE_PARAMS, CPU, gen())
    assert rev[::-1] == fwd
    assert fwd[0] != fwd[2]  # different models, different numbers


def test_performance_is_invariant_to_hidden_permutations(tiny_digits_models, rng):
    sp = load_dataset("digits", 0)
    rec, state = tiny_digits_models[0]
    permuted = permute(state, rec.spec, random_perms(rec.spec, rng))
    a, b = performance(batch_of([(rec, state), (rec, permuted)]), sp, PERFORMANCE_PARAMS, CPU, gen())
    assert a.pop("test_correct") == b.pop("test_correct")  # the same examples right, one by one
    assert a == pytest.approx(b, abs=1e-6)


# --- attacks ------------------------------------------------------------------------------------
def test_robust_accuracy_below_clean_and_non_increasing_in_eps(tiny_digits_models):
    sp = load_dataset("digits", 0)
    models = tiny_digits_models[:3] + tiny_digits_models[3:4]
    params = PGDParams(eps_linf=(1 / 255, 8 / 255, 32 / 255, 96 / 255), eps_l2=(0.1, 1.0, 3.0), steps=5,
                       n_examples=80, subset_seed=1)
    from labeling.attacks import subset

    idx = subset(len(sp.y_test), 80, 1)
    for group in (models[:3], models[3:]):
        b = batch_of(group)
        res = pgd(b, sp, params, CPU, gen())
        for m, d in zip(b.modules, res):
            clean = float((m(sp.x_test[idx]).argmax(-1) == sp.y_test[idx]).double().mean())
            for norm, eps in (("linf", params.eps_linf), ("l2", params.eps_l2)):
                vals = [d[f"pgd_{norm}_{eps_name(e)}"] for e in eps]
                assert all(v <= clean + 1e-12 for v in vals)
                assert all(a >= b for a, b in zip(vals, vals[1:]))
                assert vals[-1] < clean  # a large ball must break some examples: the attack does something


def test_pgd_is_deterministic_and_restores_global_rng(tiny_digits_models):
    sp = load_dataset("digits", 0)
    b = batch_of(tiny_digits_models[:2])
    params = PGDParams(eps_linf=(8 / 255,), eps_l2=(), steps=3, n_examples=50)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = pgd(b, sp, params, CPU, gen())
    after = torch.rand(3)
    assert torch.equal(before, after)  # the global RNG is untouched by the attack's seeding
    assert pgd(b, sp, params, CPU, gen()) == first


def test_autoattack_on_a_fixed_subset_below_clean(tiny_digits_models):
    sp = load_dataset("digits", 0)
    b = batch_of(tiny_digits_models[:1])
    prop = PROPERTIES.get("autoattack")
    params = prop.resolve_params(sp, AutoAttackParams(n_examples=10, n_queries=10, eps=16 / 255))
    assert len(params.indices) == 10 and list(params.indices) == sorted(set(params.indices))
    res = autoattack(b, sp, params, CPU, gen())
    for d in res:
        assert 0 <= d["autoattack_ta_standard_16_255"] <= d["autoattack_ta_standard_16_255_clean"]
        # the trained model is far above chance on the subset, and the attack breaks some of it: it did something
        assert d["autoattack_ta_standard_16_255_clean"] >= 0.5  # chance: 0.1
        assert d["autoattack_ta_standard_16_255"] < d["autoattack_ta_standard_16_255_clean"]


# --- corruptions --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_changes_images_deterministically(name):
    x = load_dataset("digits", 0).x_test[:4]
    a, b = corrupt(x, name, 3, seed=0), corrupt(x, name, 3, seed=0)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) > 1e-3


def test_severity_5_hurts_more_than_severity_1(tiny_digits_models, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    sp = load_dataset("digits", 0)
    b = batch_of(tiny_digits_models[:2])
    params = CorruptionParams(corruptions=tuple(n for n in CORRUPTIONS if n != "glass_blur"),
                              severities=(1, 5), n_examples=60)
    res = corruption_robustness(b, sp, params, CPU, gen())
    for d in res:
        assert d["corruption_severity_5"] < d["corruption_severity_1"]
        assert d["corruption_mean_accuracy"] == pytest.approx((d["corruption_severity_1"] + d["corruption_severity_5"]) / 2)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == len(params.corruptions) * 2  # cached on disk, one file per (corruption, severity)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    again = corruption_robustness(b, sp, params, CPU, gen())
    assert again == res and all(f.stat().st_mtime_ns == t for f, t in mtimes.items())  # reused, not remade


def test_corruption_cache_is_keyed_by_the_images(tmp_path):
    x = load_dataset("digits", 0).x_test[:3]
    a = corrupted_test_set("digits", 0, x, ("contrast",), (2,), root=tmp_path)
    b = corrupted_test_set("digits", 0, x.flip(0), ("contrast",), (2,), root=tmp_path)
    assert torch.allclose(a[("contrast", 2)].flip(0), b[("contrast", 2)])
    assert len(list(tmp_path.rglob("*.pt"))) == 2


# --- weight statistics and efficiency -----------------------------------------------------------
def test_spectral_norm_and_stable_rank_of_known_matrices():
    d = matrix_stats(torch.diag(torch.tensor([3.0, 2.0, 1.0])))
    assert d["spectral_norm"] == pytest.approx(3.0)
    assert d["stable_rank"] == pytest.approx(14 / 9)
    assert d["frobenius_norm"] == pytest.approx(14 ** 0.5)
    w = torch.randn(7, 3, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = w.reshape(7, -1)
    d = matrix_stats(w)
    top = float(torch.linalg.matrix_norm(m, ord=2))
    assert d["spectral_norm"] == pytest.approx(top)
    assert d["stable_rank"] == pytest.approx(float(torch.linalg.matrix_norm(m) ** 2) / top ** 2)
    assert d["sv_q50"] == pytest.approx(float(torch.linalg.svdvals(m).median()))


def test_weight_stats_invariant_to_permutations_but_not_to_rescaling(tiny_digits_models, rng):
    rec, state = tiny_digits_models[0]
    p = WeightStatsParams()
    a = weight_stats(rec, state, p)
    b = weight_stats(rec, permute(state, rec.spec, random_perms(rec.spec, rng)), p)
    assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-9, abs=1e-12)
    c = weight_stats(rec, {k: v * 2 for k, v in state.items()}, p)
    assert c["weights_spectral_norm_max"] == pytest.approx(2 * a["weights_spectral_norm_max"])
    assert c["weights_stable_rank_mean"] == pytest.approx(a["weights_stable_rank_mean"])
    assert "weights_l0_spectral_norm" in a and "weights_l2_spectral_norm" in a


def test_flops_of_known_mlp_and_cnn_match_hand_counts():
    mlp = build("mlp", {"input_shape": [1, 8, 8], "n_classes": 10, "width": 32, "depth": 2}).module
    assert count_flops(mlp, torch.zeros(1, 1, 8, 8)) == 2 * (64 * 32 + 32 * 32 + 32 * 10)
    cnn = build("cnn", {"input_shape": [1, 8, 8], "n_classes": 10, "channels": 6, "n_layers": 2}).module
    # 3x3 stride-2 convs: 8x8 -> 4x4 -> 2x2; a multiply-add counts 2
    assert count_flops(cnn, torch.zeros(1, 1, 8, 8)) == 2 * (16 * 6 * 1 * 9 + 4 * 6 * 6 * 9 + 6 * 10)


# --- every registered property ------------------------------------------------------------------
CHEAP = {  # small parameters so that every entry runs in a test
    "pgd": PGDParams(eps_linf=(8 / 255,), eps_l2=(0.5,), steps=2, n_examples=20),
    "autoattack": AutoAttackParams(n_examples=4, n_queries=5),
    "corruptions": CorruptionParams(corruptions=("gaussian_noise", "contrast"), severities=(1, 2), n_examples=10),
}


@pytest.mark.parametrize("name", PROPERTIES.names())
def test_every_property_returns_finite_values_per_model(name, tiny_digits_models, tmp_path, monkeypatch):
    import json
    import math

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    prop = PROPERTIES.get(name)
    assert prop.version >= 1
    sp = toy_splits() if prop.needs_sensitive else load_dataset("digits", 0)
    if prop.needs_sensitive:
        b = ModelBatch((None, None), (nn.Linear(3, 2).eval(), Constant(1, 2)), ({}, {}))
    else:
        b = batch_of(tiny_digits_models[3:5])
    assert prop.applies(sp.info)
    params = prop.params_for(sp) if name not in CHEAP else (prop.resolve_params or (lambda s, p: p))(sp, CHEAP[name])
    json.dumps(prop.params_json(params))  # parameters are stored as JSON with every label
    res = prop.fn(b, sp, params, CPU, gen())
    assert len(res) == 2 and all(d for d in res)
    for d in res:
        for name, v in d.items():
            if isinstance(v, PerExample):  # a per-example outcome: one bool per example of its split
                split = name.split("_")[0]
                assert v.values.dtype == bool and v.values.shape == (len(sp.split(split)[1]),), name
            else:
                assert math.isfinite(v), name
