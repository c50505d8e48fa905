"""WeightNet's configuration: one frozen dataclass; its stable hash names checkpoints and token caches."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass, field

from core.errors import ZooError
from core.hashing import stable_hash

POOLINGS = ("cls", "mean", "attention")
SUMMARIES = ("layers", "pooled", "both", "auto")
VIEWS = ("full", "probes")
LOSSES = ("mse", "huber")
PROBE_INITS = ("uniform", "normal")


@dataclass(frozen=True)
class TokenizerConfig:
    name: str = "neuron"  # a weightnet.tokenizers.TOKENIZERS entry: neuron | layer | global
    # invariant: tokens of a permutable group are a set (no position inside it);
    # weight_sort / activation_sort / align: canonicalize first, then positions are meaningful;
    # none: raw order with positions (the ablation).
    permutation: str = "invariant"
    n_quantiles: int = 3  # empirical-CDF points per token (any fan-in maps to a fixed width)
    # max tokens per (tensor, axis); wider ones pool sorted units into buckets. 8 (was 32): attention cost
    # grows with tokens squared, and on 2,800 bench-mnist1d-mlp models 8 vs 32 moved Kendall tau by < 0.01
    # at equal steps (docs/results.md "WeightNet fit cost")
    unit_budget: int = 8
    max_tokens: int = 1024  # per model; shrinks unit_budget for very large specs
    chunk: int = 64  # global tokenizer: parameters per token
    probe_size: int = 32  # activation_sort: probe batch size (fixed, seeded)
    # whole-model summary (tokenizers.summarize): per-layer StatNN statistics in layer order ("layers"),
    # a depth-free pooling of them that lines up across architectures ("pooled"), both, or "auto": layers
    # when the training models share one tensor layout, else pooled (resolved by WeightNetPredictor.prepare;
    # measured: layers 0.637 vs pooled 0.556 tau on one layout, pooled +0.09-0.10 on held-out families)
    summary: str = "auto"
    # per-unit statistics as fan-in sums (mean, std, |x|, rms, min, max times the unit's entry count) and
    # summary statistics times the layer's fan-in, width-dependent metadata zeroed: unchanged by
    # function-preserving widening for every tensor whose input axis is widened (Net2Wider divides those
    # entries by the factor and repeats them). Measured with probes on 600 digits CNNs + MLPs
    # (docs/weightnet.md): R2 unchanged on 2x/4x widened test models (was -0.03 to -0.9), tau up too
    width_invariant: bool = True

    @property
    def id(self) -> str:
        return stable_hash(self)


@dataclass(frozen=True)
class WeightNetConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    d_model: int = 32  # small zoos (~100 training models): a small encoder generalizes better (bench/weightnet_quality.py)
    depth: int = 1
    heads: int = 4
    mlp_ratio: int = 2
    pooling: str = "cls"  # cls | mean | attention
    layer_type_embedding: bool = True  # add learned embeddings of layer kind and tensor role
    segment_embedding: bool = True  # add depth, position-in-layer and shape metadata (fan-in/out, kernel)
    # StatNN-style per-layer weight statistics (tokenizers.layer_summary), z-scored with training-set
    # statistics, embedded by a small MLP and concatenated to the pooled encoding before the heads:
    # invariant by construction, and what makes StatNN strong on small zoos
    summary: bool = True
    # learned probe inputs run through every rebuildable model (weightnet.probes): one token per probe,
    # exactly invariant to permutations and function-preserving widening; 0 turns probe tokens off.
    # 32 (was 16): on the full-size benchmark zoos (same 5 split seeds, three-target fits) Kendall tau on
    # test accuracy / gen gap / PGD went +0.009 / +0.003 / +0.004 (bench-mnist1d-mlp; 48: +0.005 / +0.005
    # / +0.006, 64: +0.001 / +0.002 / +0.000) and +0.005 / +0.002 / +0.005 (bench-mnist1d-cnn), +0.006 on
    # bench-mnist1d-wild (3 seeds), for ~15-25% more fit time (docs/results.md "Probes: 32")
    probes: int = 32
    # probe_latent > 0: each probe is a learned code of that width through one shared generator of three
    # linear layers without activations (ProbeGen, Kahana et al., ICLR 2025: the shared deep linear map ties
    # the probes together, a bias towards structured inputs); 0: the inputs themselves are learned, from
    # probe_init noise ("uniform" in [0, 1) or "normal"). 32 (was 0): bench/weightnet_quality.py, random
    # splits, same 3 split seeds, tau on test accuracy bench-mnist1d-wild 0.794 -> 0.820, bench-mnist1d-cnn
    # 0.830 -> 0.850, bench-mnist1d-mlp 0.819 -> 0.826, same fit time (latent 64 or 64 probes: no better on
    # the CNNs; docs/results.md "Generated probes")
    probe_init: str = "uniform"
    probe_latent: int = 32
    # models whose forward pass on one example costs more FLOPs get no probe tokens (weight tokens only):
    # probes run once per ensemble member at prediction time (ResNet-18 at 224x224: 3.6e9 -> skipped)
    probe_max_flops: float = 5e7
    # probe readout: every probe's features concatenated in probe order (probes are fixed learned inputs,
    # not a set) through a small MLP, beside the pooled encoding before the heads (ProbeGen reads its
    # probes this way), so the heads see the probes' joint outputs and not only the encoder's one-layer
    # attention average of them. Models without probe outputs read it of zero features. On (was off):
    # bench/weightnet_quality.py random splits, same split seeds side by side, tau on test accuracy
    # bench-mnist1d-wild 0.815 -> 0.848 (3 seeds), bench-mnist1d-mlp 0.824 -> 0.844 and bench-mnist1d-cnn
    # 0.846 -> 0.879 (5 seeds, every seed up), digits-cnn zoos of 100 / 600 models 0.737 -> 0.795 /
    # 0.723 -> 0.751 (8 seeds), the tests' 96 briefly trained MLPs 0.733 -> 0.787 Spearman (10 seeds; with 48
    # of them -0.046 +- 0.047, 18 seeds: within the noise). Held-out families not measured with it
    # (docs/results.md "Probe readout on the homogeneous zoos and small zoos")
    probe_readout: bool = True
    weight_tokens: bool = True  # the per-unit weight tokens (off: probe tokens, CLS and the summary only)
    # probes-only view: a training model is read from its probe tokens alone (weight tokens masked, summary
    # at the training mean) with this probability, so one network also predicts from the function alone;
    # ``unseen_view="probes"`` then reads models of architectures absent from the training set that way
    # (their weight tokens and summaries lie outside anything the network was fitted on; probe tokens
    # have one shape for every architecture on an input space). Models without probe tokens keep every token.
    # 0.25 / "probes" (was 0 / "full"): on bench-mnist1d-wild held out (trained on the mnist1d MLPs and
    # CNNs, 5 split seeds) tau 0.533 -> 0.736, R2 0.28 -> 0.77; held-out MLPs 0.692 -> 0.689 (R2 0.23 -> 0.69);
    # held-out CNNs 0.816 -> 0.798 (1 seed: a loss); random splits unchanged within the seed spread
    # (docs/results.md "Probes-only view for unseen architectures")
    view_dropout: float = 0.25
    unseen_view: str = "probes"  # full | probes
    dropout: float = 0.1  # on the heads' input (pooled encoding + summary embedding)
    loss: str = "huber"  # regression loss on standardized targets
    rank_loss: float = 3.0  # weight of a pairwise logistic ranking loss within each batch (helps Kendall tau)
    loss_weights: tuple[tuple[str, float], ...] = ()  # (property, weight); default 1
    lr: float = 2e-3
    weight_decay: float = 1e-2
    epochs: int = 40  # passes over the training set, unless max_examples stops the fit sooner
    # training budget per member in examples seen (optimizer steps x batch_size): beyond max_examples /
    # epochs training models the fit no longer grows with the zoo (docs/results.md "WeightNet fit cost")
    # (measured there: optimizer steps buy tau, so batch 32: 1,500 steps 0.800 vs 375 steps of 64 0.751-0.760).
    # 96,000 (was 48,000): on the full-size benchmark zoos (2,800 training models, 5 split seeds) it raised
    # Kendall tau on test accuracy / PGD by +0.021 / +0.016 (bench-mnist1d-mlp) and +0.009 / +0.010
    # (bench-mnist1d-cnn) for about twice the fit time (docs/results.md "WeightNet on the benchmark zoos")
    max_examples: int = 96_000
    batch_size: int = 32
    # validation checks: one per epoch (or per 1/epochs of the budget), each on at most val_max
    # validation models (a seeded subset), so early stopping costs the same on any zoo size
    val_max: int = 256
    # epochs without validation improvement before stopping; the best validation state is kept either
    # way. Stopping early on ~15 validation models was noise (measured: 0.60 -> 0.615 Kendall tau without)
    patience: int = 40
    # members trained from seeds seed, seed+1000, ...; predictions are their mean. 1 (was 5): at a fixed fit
    # time, steps per member earn more than members (docs/results.md "WeightNet fit cost")
    ensemble: int = 1
    # refit each property's prediction as a * p + b (a > 0, so rankings are unchanged) by least squares on
    # the validation set: the ranking loss leaves the regression scale loose (R2 < 0 while tau is good)
    calibrate: bool = True
    alpha: float = 0.1  # conformal intervals cover 1 - alpha
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.tokenizer
        if isinstance(t, dict):
            object.__setattr__(self, "tokenizer", TokenizerConfig(**t))
            t = self.tokenizer
        from weightnet.canonical import CANONICALIZERS  # the registries (they import this module)
        from weightnet.tokenizers import TOKENIZERS

        for value, known, what in ((t.name, tuple(TOKENIZERS.names()), "tokenizer"),
                                   (t.permutation, tuple(CANONICALIZERS.names()), "permutation"),
                                   (t.summary, SUMMARIES, "summary"),
                                   (self.pooling, POOLINGS, "pooling"), (self.loss, LOSSES, "loss"),
                                   (self.unseen_view, VIEWS, "unseen_view"),
                                   (self.probe_init, PROBE_INITS, "probe_init")):
            if value not in known:
                raise ZooError(f"unknown {what} {value!r} (known: {', '.join(known)})")
        if self.probe_latent < 0:
            raise ZooError(f"probe_latent must be >= 0, got {self.probe_latent}")
        if self.probe_latent and self.probe_init != "uniform":  # generated probes start from normal codes
            raise ZooError(f"probe_init {self.probe_init!r} applies to free probes only (probe_latent=0); "
                           f"got probe_latent={self.probe_latent}")
        for name in ("epochs", "max_examples", "batch_size", "val_max"):
            if getattr(self, name) < 1:
                raise ZooError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.view_dropout < 1.0:
            raise ZooError(f"view_dropout must be in [0, 1), got {self.view_dropout}")
        if self.ensemble < 1:
            raise ZooError(f"ensemble must be >= 1, got {self.ensemble}")
        if self.d_model % self.heads:
            raise ZooError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        object.__setattr__(self, "loss_weights", tuple(tuple(x) for x in self.loss_weights))

    @property
    def id(self) -> str:
        return stable_hash(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WeightNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ZooError(f"unknown WeightNet config key {unknown[0]!r} (known: {', '.join(sorted(names))})")
        d = dict(d)
        if isinstance(d.get("tokenizer"), dict):
            tnames = {f.name for f in dataclasses.fields(TokenizerConfig)}
            bad = sorted(set(d["tokenizer"]) - tnames)
            if bad:
                raise ZooError(f"unknown tokenizer config key {bad[0]!r} (known: {', '.join(sorted(tnames))})")
            d["tokenizer"] = TokenizerConfig(**d["tokenizer"])
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | pathlib.Path) -> "WeightNetConfig":
        try:
            return cls.from_dict(json.loads(pathlib.Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ZooError(f"cannot read WeightNet config {path}: {e}") from None
