"""``transformer``: a Hugging Face BERT encoder (``transformers.BertModel`` built from a ``BertConfig``)
plus BERT's classification head, over sequences.

Two inputs: ``input="features"`` (default) reads a float sequence ``(N, C, L)`` (e.g. mnist1d as a
40-step sequence of 1 feature) through a linear input projection into ``inputs_embeds``;
``input="tokens"`` reads integer token ids ``(N, L)`` like a hub BERT. State-dict names match
``BertForSequenceClassification`` (``bert.*``, ``classifier.*``), so hub checkpoints load as they are.
``hf_config`` (a full ``BertConfig.to_dict()``) overrides the tiny defaults: ingest records it.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from core.errors import UnknownEntry
from core.spec import spec_from_module
from zoo.archs import ARCHS, Built


def bert_config(config: Mapping):
    from transformers import BertConfig

    if config.get("hf_config"):
        d = dict(config["hf_config"])
        if d.get("model_type", "bert") != "bert":
            raise UnknownEntry(f"transformer: model_type {d.get('model_type')!r} is not BERT-style")
        return BertConfig.from_dict(d)
    length = int(config["input_shape"][-1])
    drop = float(config.get("dropout", 0.0))
    return BertConfig(vocab_size=int(config.get("vocab_size", 2)), hidden_size=int(config.get("hidden_size", 16)),
                      num_hidden_layers=int(config.get("n_layers", 2)), num_attention_heads=int(config.get("n_heads", 2)),
                      intermediate_size=int(config.get("intermediate_size", 32)), max_position_embeddings=length,
                      hidden_dropout_prob=drop, attention_probs_dropout_prob=drop, type_vocab_size=1)


class SequenceClassifier(nn.Module):
    def __init__(self, cfg, n_classes: int, in_features: int | None) -> None:
        super().__init__()
        from transformers import BertModel

        cfg._attn_implementation = "eager"  # deterministic across backends; tiny sizes anyway
        self.in_proj = nn.Linear(in_features, cfg.hidden_size) if in_features else None
        self.bert = BertModel(cfg, add_pooling_layer=True)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, n_classes) if n_classes > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_proj is not None:
            out = self.bert(inputs_embeds=self.in_proj(x.flatten(2).transpose(1, 2)))  # (N, C, L) -> (N, L, D)
        else:
            out = self.bert(input_ids=x.long().flatten(1))  # (N, L) token ids
        pooled = out.pooler_output  # (N, D): tanh(dense(first position))
        return self.classifier(self.dropout(pooled)) if self.classifier is not None else pooled


def bert_annotations(m: SequenceClassifier) -> dict:
    R = "residual"
    ann: dict = {}

    def lin(name: str, kind: str, layer: int, out: str | None, inp: str | None, blocks: tuple = (1, 1)) -> None:
        ann[f"{name}.weight"] = (kind, layer, (out, inp), blocks)
        ann[f"{name}.bias"] = (kind, layer, (out,), blocks[:1])

    def ln(name: str, layer: int) -> None:
        ann[f"{name}.weight"] = ("norm", layer, (R,), ())
        ann[f"{name}.bias"] = ("norm", layer, (R,), ())

    if m.in_proj is not None:
        lin("in_proj", "linear", 0, R, None)
    e = "bert.embeddings"
    ann[f"{e}.word_embeddings.weight"] = ("embedding", 0, (None, R), ())
    ann[f"{e}.token_type_embeddings.weight"] = ("embedding", 0, (None, R), ())
    ann[f"{e}.position_embeddings.weight"] = ("pos_embedding", 0, (None, R), ())
    ln(f"{e}.LayerNorm", 0)
    cfg = m.bert.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    for i in range(cfg.num_hidden_layers):
        p, a, f, heads = f"bert.encoder.layer.{i}", 1 + 2 * i, 2 + 2 * i, f"layer.{i}.heads"
        for key, kind in (("query", "attn_q"), ("key", "attn_k"), ("value", "attn_v")):
            lin(f"{p}.attention.self.{key}", kind, a, heads, R, (hd, 1))
        lin(f"{p}.attention.output.dense", "attn_o", a, R, heads, (1, hd))
        ln(f"{p}.attention.output.LayerNorm", a)
        lin(f"{p}.intermediate.dense", "linear", f, f"layer.{i}.ffn", R)
        lin(f"{p}.output.dense", "linear", f, R, f"layer.{i}.ffn")
        ln(f"{p}.output.LayerNorm", f)
    top = 1 + 2 * cfg.num_hidden_layers
    lin("bert.pooler.dense", "linear", top, "pooler", R)
    if m.classifier is not None:
        lin("classifier", "linear", top + 1, None, "pooler")
    return ann


@ARCHS.register("transformer")
def transformer(config: dict) -> Built:
    mode = config.get("input", "features")
    if mode not in ("features", "tokens"):
        raise UnknownEntry(f"transformer: unknown input {mode!r} (known: features, tokens)")
    shape = list(config["input_shape"])
    in_features = int(shape[0]) if mode == "features" else None
    m = SequenceClassifier(bert_config(config), int(config["n_classes"]), in_features)
    return Built(m, spec_from_module(m, bert_annotations(m)))
