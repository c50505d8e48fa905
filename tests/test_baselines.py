"""Every baseline fits a tiny synthetic zoo whose label is a known function of the weights and beats
predicting the mean; the NFN layers respect the weight-space symmetry (and only it)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from core.errors import ZooError
from core.spec import permute, random_perms
from evaluation.baselines.calculators import flops
from evaluation.baselines.features import statnn_vector
from evaluation.baselines.nfn import NFN, NPLayer, layout, to_features
from evaluation.predictors import PREDICTORS, make_predictor
from fixtures.eval_zoo import synthetic_samples
from fixtures.symmetry import break_coupling
from weightnet.metrics import mae
from weightnet.predictor import Predictor

LEARNED = [n for n, entry in PREDICTORS.items() if entry.learned]  # WeightNet and every learned baseline
# keep the test budget small; the feature MLPs take well under a second
FAST = {"nfn": {"epochs": 60}, "weightnet": {"d_model": 16, "heads": 2, "depth": 1, "epochs": 30, "ensemble": 1,
                                             "probes": 4}}


def _make(name: str):
    return PREDICTORS.get(name).make(**FAST.get(name, {}))


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_every_registered_predictor_is_built_by_name(name):
    pred = make_predictor(name)
    assert isinstance(pred, Predictor) and pred.name == name
    with pytest.raises((ZooError, TypeError), match="no_such_field"):  # a misspelt option is never dropped
        make_predictor(name, overrides={"no_such_field": 1})


def test_weightnet_is_registered_beside_the_baselines():
    assert {"weightnet", "statnn-gbt", "statnn-mlp", "nfn", "flat-mlp", "calc"} <= set(PREDICTORS.names())
    assert make_predictor("weightnet", overrides={"epochs": 3, "tokenizer.name": "layer"}).config.tokenizer.name == "layer"


@pytest.fixture(scope="module")
def zoos():
    g = torch.Generator().manual_seed(0)
    zoos = {arch: synthetic_samples(arch, 48, g) for arch in ("mlp", "cnn")}
    zoos.update({f"{arch}-shared": synthetic_samples(arch, 48, g, shared_init=True) for arch in ("mlp", "cnn")})
    return zoos


# A flat MLP has no symmetry prior: from 32 independently initialized models it cannot learn even a
# weight norm (measured: Kendall tau ~0.05), so it is tested on a shared-initialization zoo, where a
# weight's position means the same thing in every model. The others must work on independent inits.
ZOO_FOR = {"flat-mlp": "-shared"}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("name", LEARNED)
def test_baseline_beats_the_mean_on_a_known_function(zoos, name, arch):
    samples = zoos[arch + ZOO_FOR.get(name, "")]
    train, val, test = samples[:30], samples[30:38], samples[38:]  # val: 4 for early stopping, 4 calibrate
    pred = _make(name)
    assert isinstance(pred, Predictor)
    pred.fit(train, val, ["norm0"], seed=0)
    out = pred.predict(test)
    y = np.array([s.labels["norm0"] for s in test])
    mean = np.mean([s.labels["norm0"] for s in train])
    assert out["norm0"].shape == (len(test),)
    assert mae(y, out["norm0"]) < 0.7 * mae(y, np.full_like(y, mean))
    assert_interval_is_the_calibration_quantile(pred, val, test, out["norm0"])


def assert_interval_is_the_calibration_quantile(pred, val, test, point) -> None:
    """The half-width is the model's novelty scale times the ceil((n+1)(1-alpha))-th smallest |error| /
    scale on the calibration models, a part of the validation set recomputed here from the predictor's
    own predictions (alpha 0.5: rank 3 of 4)."""
    cal = [s for s in val if s.model_id in set(pred.conformal.calibration_ids)]
    assert len(cal) == 4  # half of the 8 validation runs
    assert pred.conformal.normalized  # every learned baseline reads a representation
    s_cal, s_test = pred._predict_scaled(cal)[1], pred._predict_scaled(test)[1]
    assert np.all(s_cal > 0) and np.all(s_test > 0) and np.ptp(s_test) > 0
    r = np.sort(np.abs(pred.predict(cal)["norm0"] - np.array([s.labels["norm0"] for s in cal])) / s_cal)
    lo, hi = pred.predict_interval(test, alpha=0.5)["norm0"]
    np.testing.assert_allclose(hi - point, r[2] * s_test, rtol=1e-9)
    np.testing.assert_allclose(point - lo, r[2] * s_test, rtol=1e-9)
    lo, hi = pred.predict_interval(test, alpha=0.1)["norm0"]  # rank 5 of 4 does not exist: no finite interval
    assert np.all(np.isinf(lo) & np.isinf(hi))


@pytest.mark.parametrize("name", LEARNED)
def test_baseline_is_deterministic_given_the_seed(zoos, name):
    samples = zoos["mlp"][:24]
    a, b = _make(name), _make(name)
    a.fit(samples[:16], samples[16:20], ["norm0"], seed=3)
    b.fit(samples[:16], samples[16:20], ["norm0"], seed=3)
    np.testing.assert_allclose(a.predict(samples[20:])["norm0"], b.predict(samples[20:])["norm0"], rtol=1e-6)


def test_calculators_are_exact_zero_shot(zoos):
    calc = _make("calc")
    calc.fit([], [], ["n_params", "flops", "test_accuracy"], seed=0)
    s = zoos["mlp"][0]
    out = calc.predict([s])
    assert set(out) == {"n_params", "flops"}  # it never pretends to know other properties
    assert out["n_params"][0] == 64 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10
    assert out["flops"][0] == 2 * (64 * 8 + 8 * 8 + 8 * 10)  # 2 FLOPs per multiply-add, one example
    c = zoos["cnn"][0]  # two 3x3 stride-2 convs on 8x8: 4x4 then 2x2 outputs, then a linear head
    assert flops(c) == 2 * (8 * 1 * 9 * 16 + 8 * 8 * 9 * 4 + 8 * 10)


def test_statnn_features_are_per_layer_statistics(zoos):
    s = zoos["mlp"][0]
    v = statnn_vector(s)
    assert v.shape == (3 * 2 * 7,)  # 3 layers x (weights, biases) x (mean, var, 5 quantiles)
    w0 = s.state["layers.0.weight"].double()
    assert v[0] == pytest.approx(float(w0.mean()))
    assert v[2] == pytest.approx(float(w0.min())) and v[6] == pytest.approx(float(w0.max()))
    # StatNN is permutation-invariant by construction
    perm = permute(s.state, s.spec, random_perms(s.spec, torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(statnn_vector(type(s)(**{**s.__dict__, "state": perm})), v, rtol=1e-10)


def _layer_outputs(layer: NPLayer, lay, states):
    with torch.no_grad():
        return layer(to_features(lay, states))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_np_layer_is_permutation_equivariant(zoos, arch, rng):
    s = zoos[arch][0]
    lay = layout(s.spec)
    torch.manual_seed(0)
    layer = NPLayer(lay, lay.channels, 5)
    perms = random_perms(s.spec, rng)
    out = _layer_outputs(layer, lay, [s.state])
    out_p = _layer_outputs(layer, lay, [permute(s.state, s.spec, perms)])
    for name, sets, y, yp in zip(lay.names, lay.sets, out, out_p):
        expect = y
        for a, g in enumerate(sets):
            if g in perms:
                expect = expect.index_select(2 + a, perms[g])
        torch.testing.assert_close(yp, expect, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_nfn_is_invariant_and_break_coupling_changes_it(zoos, arch, rng):
    s = zoos[arch][0]
    lay = layout(s.spec)
    torch.manual_seed(0)
    net = NFN(lay, 2).eval()
    with torch.no_grad():  # the invariant embedding (per-tensor pooled features) before the head
        base = net.embed(to_features(lay, [s.state]))
        perm = net.embed(to_features(lay, [permute(s.state, s.spec, random_perms(s.spec, rng))]))
        broken = net.embed(to_features(lay, [break_coupling(s.state, s.spec, rng)]))
    torch.testing.assert_close(perm, base, rtol=1e-5, atol=1e-6)
    assert float((broken - base).abs().max()) > 1e-4  # >1000x the float error of the symmetric case


def test_nfn_refuses_a_zoo_with_another_layout(zoos):
    pred = _make("nfn")
    pred.fit(zoos["mlp"][:8], [], ["norm0"], seed=0)
    with pytest.raises(ZooError, match="different tensor layout"):
        pred.predict(zoos["cnn"][:2])


def test_baseline_names_a_missing_label(zoos):
    pred = _make("statnn-gbt")
    with pytest.raises(ZooError, match="no label 'test_accuracy'"):
        pred.fit(zoos["mlp"][:8], [], ["test_accuracy"], seed=0)


@pytest.mark.parametrize("max_examples,with_val", [(50, True), (50, False), (None, True)])
def test_fit_torch_stops_at_its_examples_budget(max_examples, with_val):
    """The budget counts training examples, stops the epoch in progress, and still validates it."""
    from evaluation.baselines.base import fit_torch

    seen = {"train": 0, "val": 0}
    xs, ys = torch.randn(40, 3), torch.randn(40, 1)

    def batches(split, g):
        if split == "val" and not with_val:
            return
        order = torch.randperm(40, generator=g)
        for i in range(0, 40, 16):
            idx = order[i:i + 16]
            seen[split] += len(idx)
            yield xs[idx], ys[idx]

    fit_torch(torch.nn.Linear(3, 1), batches, lambda m, x: m(x), seed=0, epochs=5, patience=100,
              max_examples=max_examples)
    if max_examples is None:
        assert seen["train"] == 5 * 40
    else:
        assert seen["train"] == 56  # 40 (epoch 1) + 16: the first batch of epoch 2 crosses 50
    assert seen["val"] == (0 if not with_val else (5 if max_examples is None else 2) * 40)


def test_fit_torch_refuses_an_empty_budget():
    from evaluation.baselines.base import fit_torch

    with pytest.raises(ZooError, match="max_examples"):
        fit_torch(torch.nn.Linear(3, 1), lambda s, g: iter(()), lambda m, x: m(x), seed=0, max_examples=0)
