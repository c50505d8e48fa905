"""WeightNet's fit cost is bounded: a budget in examples seen, early stopping on a bounded validation
subset, and training batches sliced from tokens padded once (identical to per-step padding)."""
from __future__ import annotations

import pytest
import torch

from core.errors import ZooError
from fixtures.eval_zoo import synthetic_samples
from weightnet.config import WeightNetConfig
from weightnet.model import WeightNetPredictor
from weightnet.network import Collated, collate


def _tiny(**kw) -> WeightNetConfig:
    return WeightNetConfig(d_model=16, heads=2, probes=4, ensemble=1, batch_size=4, **kw)


def assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_precollated_batches_equal_per_step_collate(rng: torch.Generator) -> None:
    samples = synthetic_samples("mlp", 5, rng, width=8) + synthetic_samples("cnn", 5, rng, width=4)
    p = WeightNetPredictor(_tiny())
    p.prepare(samples)
    toks = p.pipeline.many(samples)
    assert len({len(t) for t in toks}) > 1  # mixed token counts: padding and trimming are exercised
    width = max(t.summary.numel() for t in toks)
    whole = Collated(toks, width)
    for idx in ([0, 1], [7, 2, 9], [5], list(range(10)), [9, 0]):
        assert_same_batch(whole.batch(idx), collate([toks[i] for i in idx], width))


@pytest.mark.parametrize("max_examples, expected", [(24, 24), (10_000, 10 * 20)])
def test_training_stops_at_the_example_budget(rng: torch.Generator, max_examples: int, expected: int) -> None:
    samples = synthetic_samples("mlp", 30, rng, width=8)
    p = WeightNetPredictor(_tiny(epochs=10, patience=100, max_examples=max_examples))
    p.fit(samples[:20], samples[20:], ["norm0"], seed=0)
    seen = sum(h["examples"] for h in p.history)
    assert seen == expected  # min(epochs passes over 20 models, the budget rounded up to whole batches)
    assert len(p.history) == min(10, -(-expected // 4))  # one validation check per round, rounds <= epochs


def test_early_stopping_reads_at_most_val_max_models(rng: torch.Generator, monkeypatch) -> None:
    samples = synthetic_samples("mlp", 40, rng, width=8)
    sizes: list[int] = []
    original = WeightNetPredictor.evaluate_loss

    def spy(self, toks, y, model=None, handles=None):
        sizes.append(len(toks))
        assert y.shape[0] == len(toks) and (handles is None or len(handles) == len(toks))
        return original(self, toks, y, model, handles)

    monkeypatch.setattr(WeightNetPredictor, "evaluate_loss", spy)
    p = WeightNetPredictor(_tiny(epochs=2, val_max=3))
    p.fit(samples[:16], samples[16:], ["norm0"], seed=0)  # 24 validation models: ~12 left after calibration
    assert sizes and set(sizes) == {3}
    sizes.clear()
    WeightNetPredictor(_tiny(epochs=2, val_max=1000)).fit(samples[:16], samples[16:], ["norm0"], seed=0)
    assert sizes and sizes[0] > 3  # without the cap every (non-calibration) validation model is read


@pytest.mark.parametrize("field", ["max_examples", "val_max", "batch_size", "epochs"])
def test_budget_fields_must_be_positive(field: str) -> None:
    with pytest.raises(ZooError, match=field):
        WeightNetConfig(**{field: 0})
