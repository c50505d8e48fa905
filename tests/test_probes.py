"""Probe tokens (weightnet.probes): learned inputs run through each rebuilt model. They depend only on the
function a model computes, so hidden permutations and function-preserving widening leave them unchanged,
while a permutation that is not a symmetry changes them; the probes are learned end to end; models
that cannot be rebuilt fall back to weight tokens."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.errors import ZooError
from core.spec import permute, random_perms
from fixtures.symmetry import break_coupling
from fixtures.weightnet_models import example_sample, hidden_groups, weightnet_archs, with_state
from weightnet.config import WeightNetConfig
from evaluation.widen import widen
from weightnet.model import WeightNetPredictor
from weightnet.probes import ProbeRunner

WIDENABLE = ("mlp", "cnn", "wildcnn")  # evaluation.widen handles linear / conv / norm tensors


def _outputs(runner: ProbeRunner, probes: torch.Tensor, samples, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return runner.outputs(probes, runner.handles(samples), n_out)


def assert_probe_tokens_close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    scale = max(1.0, float(a.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale, float((a - b).abs().max())


@pytest.mark.parametrize("arch", weightnet_archs())
def test_probe_outputs_are_permutation_invariant_and_see_broken_coupling(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    if not hidden_groups(s.spec):
        pytest.skip(f"{arch} has no permutable group")
    runner = ProbeRunner()
    h = runner.handle(s)
    assert h is not None, f"{arch} cannot be rebuilt"
    probes = torch.rand((8, *h.input_shape), generator=torch.Generator().manual_seed(1))  # as WeightNet starts them
    n_out = runner.out_dim(h)
    perm = with_state(s, permute(s.state, s.spec, random_perms(s.spec, rng)), "perm")
    broken = with_state(s, break_coupling(s.state, s.spec, rng), "broken")
    out, has = _outputs(runner, probes, [s, perm, broken], n_out)
    assert has.all() and out.shape == (3, 8, n_out)
    assert_probe_tokens_close(out[0], out[1], 1e-5)
    assert float((out[0] - out[2]).abs().max()) > 1e-3 * max(1.0, float(out[0].abs().max()))


@pytest.mark.parametrize("arch", WIDENABLE)
def test_probe_tokens_are_invariant_to_function_preserving_widening(arch: str, rng: torch.Generator) -> None:
    s = example_sample(arch, rng)
    p = WeightNetPredictor(WeightNetConfig(d_model=16, heads=2, epochs=1, ensemble=1, probes=8))
    p.fit([example_sample(arch, rng, f"t{i}", {"y": float(i)}) for i in range(3)], [], ["y"], seed=0)
    m = p.model
    with torch.no_grad():
        base, has = m.probe_tokens(p.runner.handles([s]))
        assert has.all()
        for factor in (2, 4, 8):
            wide = widen(s, factor)
            assert wide.spec.n_params > s.spec.n_params
            tok, has_w = m.probe_tokens(p.runner.handles([wide]))
            assert has_w.all()
            assert_probe_tokens_close(base, tok, 1e-4)
    # the encoder's probe part therefore sees the same model; weight tokens do change under widening
    za = p.embed([s])
    assert np.isfinite(za).all()


def test_probes_are_learned_end_to_end_from_noise(rng: torch.Generator) -> None:
    train = [example_sample("cnn", rng, f"t{i}", {"y": float(i % 3)}) for i in range(8)]
    cfg = WeightNetConfig(d_model=16, heads=2, epochs=3, ensemble=1, probes=4, patience=10, probe_latent=0)
    p = WeightNetPredictor(cfg)
    p.fit(train, [], ["y"], seed=0)
    with torch.random.fork_rng(devices=[]):  # the same seeded init the member started from
        torch.manual_seed(0)
        fresh = p._new_model(p.model.n_summary)
    assert p.probe_shape == (1, 8, 8) and p.model.probes.shape == (4, 1, 8, 8)
    assert float((fresh.probes - p.model.probes).detach().abs().max()) > 1e-4  # training moved them
    assert 0 <= float(fresh.probes.min()) and float(fresh.probes.max()) < 1  # they started as uniform noise
    # the gradient reaches the probes through the rebuilt models
    m = p.model.train()
    reg = m(p._batch(p.pipeline.many(train)), p.runner.handles(train))
    reg.sum().backward()
    assert m.probes.grad is not None and float(m.probes.grad.abs().sum()) > 0


@pytest.mark.parametrize("how", [{"probe_latent": 0, "probe_init": "uniform"},
                                 {"probe_latent": 0, "probe_init": "normal"}, {"probe_latent": 6}])
def test_every_probe_parameterization_learns_and_keeps_the_symmetries(how: dict, rng: torch.Generator,
                                                                       tmp_path) -> None:
    """Free probes (uniform or normal noise) or probes generated from per-probe codes by a shared deep
    linear map: each is one (P, *input) tensor that the gradient reaches and training moves; the probe tokens
    stay invariant to hidden permutations, and a checkpoint restores the same probes."""
    train = [example_sample("cnn", rng, f"t{i}", {"y": float(i % 3)}) for i in range(8)]
    p = WeightNetPredictor(WeightNetConfig(d_model=16, heads=2, epochs=3, ensemble=1, probes=4, patience=10, **how))
    p.fit(train, [], ["y"], seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = p._new_model(p.model.n_summary)
    probes = p.model.probe_inputs()
    assert probes.shape == (4, 1, 8, 8)
    assert float((fresh.probe_inputs() - probes).detach().abs().max()) > 1e-4  # training moved them
    learned = {n for n, _ in p.model.named_parameters()}
    if how.get("probe_latent"):
        assert not hasattr(p.model, "probes") and {"probe_code", "probe_gen.0.weight"} <= learned
        assert (fresh.probe_code.shape == (4, 6)) and len(fresh.probe_gen) == 3
    else:
        assert "probes" in learned
        assert (float(fresh.probes.detach().min()) < 0) == (how["probe_init"] == "normal")  # normal noise is signed
    m = p.model.train()
    reg = m(p._batch(p.pipeline.many(train)), p.runner.handles(train))
    reg.sum().backward()
    grads = [q.grad for n, q in m.named_parameters() if n in ("probes", "probe_code", "probe_gen.0.weight")]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    s = train[0]
    perm = with_state(s, permute(s.state, s.spec, random_perms(s.spec, rng)), "perm")
    with torch.no_grad():
        tok, has = m.probe_tokens(p.runner.handles([s, perm]))
    assert has.all()
    assert_probe_tokens_close(tok[0], tok[1], 1e-5)
    p.save(tmp_path / "p.pt")
    q = WeightNetPredictor.load(tmp_path / "p.pt")
    assert torch.equal(q.model.probe_inputs(), p.model.probe_inputs())
    if not how.get("probe_latent"):  # a checkpoint from before probe_latent existed still loads as free probes
        ck = torch.load(tmp_path / "p.pt", weights_only=True)
        del ck["config"]["probe_latent"]
        torch.save(ck, tmp_path / "old.pt")
        assert torch.equal(WeightNetPredictor.load(tmp_path / "old.pt").model.probe_inputs(), probes)


def test_probe_readout_reads_the_probes_jointly_and_keeps_the_symmetries(rng: torch.Generator, tmp_path) -> None:
    """probe_readout: the probes' features in probe order through an MLP beside the pooled encoding. It is
    trained (its gradient is non-zero), it changes predictions, and since it reads only probe outputs,
    hidden permutations leave predictions unchanged while breaking a coupling changes them; a model
    without probe outputs reads the readout of zero features."""
    train = [example_sample("cnn", rng, f"t{i}", {"y": float(i % 3)}) for i in range(8)]
    cfg = WeightNetConfig(d_model=16, heads=2, epochs=3, ensemble=1, probes=4, patience=10)
    assert cfg.probe_readout  # the default since 2026-12-03
    p = WeightNetPredictor(cfg)
    p.fit(train, [], ["y"], seed=0)
    m = p.model
    assert m.readout[0].in_features == 4 * 2 * 10 and m.regress.in_features == 3 * 16  # pooled, summary, readout
    m.train()
    m(p._batch(p.pipeline.many(train)), p.runner.handles(train)).sum().backward()
    assert float(m.readout[0].weight.grad.abs().sum()) > 0
    s = train[0]
    perm = with_state(s, permute(s.state, s.spec, random_perms(s.spec, rng)), "perm")
    broken = with_state(s, break_coupling(s.state, s.spec, rng), "broken")
    alien = dataclasses.replace(s, model_id="alien", arch="not-registered")
    with torch.no_grad():
        feats, has = m.eval().probe_tokens(p.runner.handles([s, perm, broken, alien]))
        read = m.readout(feats.flatten(1))  # (4, d)
    assert has.tolist() == [True, True, True, False] and not feats[3].any()  # no outputs: zero features
    assert_probe_tokens_close(read[0], read[1], 1e-5)
    assert float((read[0] - read[2]).abs().max()) > 1e-4
    pred = p.predict([s, perm, alien])["y"]
    assert abs(pred[0] - pred[1]) <= 1e-4 * max(1.0, abs(pred[0])) and np.isfinite(pred[2])
    with torch.no_grad():  # zeroing the readout's output layer changes what the heads read
        m.readout[2].weight.zero_()
        m.readout[2].bias.zero_()
    assert p.predict([s])["y"][0] != pred[0]
    off = WeightNetPredictor(dataclasses.replace(cfg, probe_readout=False))
    off.fit(train, [], ["y"], seed=0)
    assert off.model.readout is None and off.model.regress.in_features == 2 * 16
    off.save(tmp_path / "off.pt")  # a checkpoint from before probe_readout existed loads without it
    ck = torch.load(tmp_path / "off.pt", weights_only=True)
    del ck["config"]["probe_readout"]
    torch.save(ck, tmp_path / "old.pt")
    old = WeightNetPredictor.load(tmp_path / "old.pt")
    assert old.model.readout is None and np.array_equal(old.predict([s])["y"], off.predict([s])["y"])
    p.save(tmp_path / "r.pt")
    assert np.array_equal(WeightNetPredictor.load(tmp_path / "r.pt").predict([s])["y"], p.predict([s])["y"])


def test_probe_settings_that_would_be_ignored_or_invalid_are_refused() -> None:
    with pytest.raises(ZooError, match="probe_init 'normal' applies to free probes only"):
        WeightNetConfig(probe_latent=32, probe_init="normal")
    with pytest.raises(ZooError, match="probe_latent must be >= 0"):
        WeightNetConfig(probe_latent=-1)
    assert WeightNetConfig(probe_latent=0, probe_init="normal").probe_init == "normal"


def test_models_that_cannot_be_rebuilt_fall_back_to_weight_tokens(rng: torch.Generator, tmp_path) -> None:
    train = [example_sample("mlp", rng, f"t{i}", {"y": float(i)}) for i in range(4)]
    s = example_sample("mlp", rng, "x")
    alien = dataclasses.replace(s, model_id="alien", arch="not-registered")
    p = WeightNetPredictor(WeightNetConfig(d_model=16, heads=2, epochs=1, ensemble=1, probes=4))
    p.fit(train, [], ["y"], seed=0)
    assert p.runner.handle(alien) is None
    assert ProbeRunner(max_flops=100.0).handle(s) is None  # too costly to probe (an MLP here: ~2e3 FLOPs)
    assert ProbeRunner(max_flops=1e4).handle(s) is not None
    _, has = p.model.probe_tokens(p.runner.handles([s, alien]))
    assert has.tolist() == [True, False]
    pred = p.predict([s, alien])["y"]
    assert np.isfinite(pred).all() and pred[0] != pred[1]  # the probe tokens of s count
    # probes survive a checkpoint
    p.save(tmp_path / "p.pt")
    q = WeightNetPredictor.load(tmp_path / "p.pt")
    assert np.array_equal(q.predict([s, alien])["y"], pred)
    # probes off: no probe parameters at all
    off = WeightNetPredictor(WeightNetConfig(d_model=16, heads=2, epochs=1, ensemble=1, probes=0))
    off.fit(train, [], ["y"], seed=0)
    assert off.probe_shape is None and not hasattr(off.model, "probes")


def test_unseen_architectures_are_read_from_their_function_alone(rng: torch.Generator, tmp_path) -> None:
    """view_dropout trains the network to also read models from probe tokens alone; unseen_view="probes"
    reads architectures absent from training that way, so their prediction depends only on the function
    (a function-preserving widening, which changes every weight token and the summary, leaves it
    unchanged), while models of the training architectures are read in full as before."""
    train = [example_sample("cnn", rng, f"t{i}", {"y": float(i % 3)}) for i in range(6)]
    cfg = WeightNetConfig(d_model=16, heads=2, epochs=2, ensemble=1, probes=4, view_dropout=0.5, unseen_view="probes")
    p = WeightNetPredictor(cfg)
    p.fit(train, [], ["y"], seed=0)
    assert p.seen_archs == ("cnn",)
    mlp, cnn = example_sample("mlp", rng, "m"), example_sample("cnn", rng, "c")
    wide = widen(mlp, 2)
    assert p._views([mlp, cnn]).tolist() == [True, False]
    pred = p.predict([mlp, wide, cnn])["y"]
    assert abs(pred[0] - pred[1]) <= 1e-4 * max(1.0, abs(pred[0]))
    full = WeightNetPredictor(dataclasses.replace(p.config, unseen_view="full"))  # the same network, read in full
    full.__dict__.update({k: v for k, v in p.__dict__.items() if k != "config"})
    assert full._views([mlp]) is None
    pred_full = full.predict([mlp, wide, cnn])["y"]
    assert abs(pred_full[0] - pred_full[1]) > 1e-4 and pred_full[0] != pred[0]
    assert pred_full[2] == pred[2]  # a training architecture: read in full either way
    # a model without probe tokens keeps its weight tokens even when its architecture is unseen
    alien = dataclasses.replace(mlp, model_id="alien", arch="not-registered")
    assert np.isfinite(p.predict([alien])["y"]).all()
    # the seen architectures survive a checkpoint, and with them the views
    p.save(tmp_path / "v.pt")
    q = WeightNetPredictor.load(tmp_path / "v.pt")
    assert q.seen_archs == ("cnn",) and np.array_equal(q.predict([mlp, wide, cnn])["y"], pred)


def test_view_dropout_zero_leaves_the_fit_unchanged(rng: torch.Generator) -> None:
    train = [example_sample("cnn", rng, f"t{i}", {"y": float(i % 3)}) for i in range(6)]
    test = [example_sample("cnn", rng, "c")]
    base = WeightNetConfig(d_model=16, heads=2, epochs=2, ensemble=1, probes=4, view_dropout=0.0, unseen_view="full")
    preds = []
    for cfg in (base, dataclasses.replace(base, unseen_view="probes"), dataclasses.replace(base, view_dropout=0.5)):
        p = WeightNetPredictor(cfg)
        p.fit(train, [], ["y"], seed=0)
        preds.append(p.predict(test)["y"])
    assert np.array_equal(preds[0], preds[1])  # the reading of unseen models does not touch training
    assert not np.array_equal(preds[0], preds[2])  # probes-only batches change what is learned
    with pytest.raises(Exception, match="view_dropout"):
        WeightNetConfig(view_dropout=1.0)
    with pytest.raises(Exception, match="unseen_view"):
        WeightNetConfig(unseen_view="weights")
