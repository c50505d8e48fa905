"""``resnet`` and ``vit``: timm models at tiny configurations (``timm.create_model(..., pretrained=False)``
with explicit small kwargs). Their specs are read off the module structure, so a timm model ingested
from the hub gets the same spec as one built here.

The ViT uses ``SplitQKVAttention`` (timm's attention with separate q/k/v projections): a fused qkv
projection cannot carry the head permutation in a spec (its out axis is [q heads | k heads | v heads]);
``split_qkv`` converts timm's fused checkpoints exactly.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import BadWeights, UnknownEntry
from core.spec import spec_from_module
from zoo.archs import ARCHS, Built


# --- resnet ------------------------------------------------------------------------------------
def resnet_kwargs(config: Mapping) -> dict:
    c, h, w = (list(config["input_shape"]) + [1, 1])[:3]
    block = config.get("block", "basic")
    if block not in ("basic", "bottleneck"):
        raise UnknownEntry(f"resnet: unknown block {block!r} (known: basic, bottleneck)")
    layers = tuple(int(n) for n in config.get("layers", (1, 1, 1, 1)))
    channels = tuple(int(n) for n in config.get("channels", (4, 8, 8, 16)))
    if len(layers) != 4 or len(channels) != 4:
        raise UnknownEntry(f"resnet: timm ResNets have 4 stages; got layers={layers} channels={channels}")
    return dict(layers=layers, channels=channels, stem_type=config.get("stem_type", "deep"),
                stem_width=int(config.get("stem_width", max(1, channels[0] // 2))), in_chans=int(c), num_classes=int(config["n_classes"]),
                drop_rate=float(config.get("dropout", 0.0)), block=block)


def _bn(ann: dict, prefix: str, group: str, layer: int) -> None:
    for part in ("weight", "bias", "running_mean", "running_var"):
        ann[f"{prefix}.{part}"] = ("norm", layer, (group,), ())


def _conv(ann: dict, name: str, conv: nn.Conv2d, out: str, inp: str | None, layer: int) -> None:
    ann[f"{name}.weight"] = ("conv", layer, (out, inp, None, None), ())
    if conv.bias is not None:
        ann[f"{name}.bias"] = ("conv", layer, (out,), ())


def resnet_annotations(m: nn.Module) -> dict:
    """Spec annotations of a timm ResNet (7x7 or 'deep' 3-conv stem, BasicBlock or Bottleneck blocks)."""
    ann: dict = {}
    prev = "stem" if m.layer1[0].downsample is not None else "stage0.stream"  # the stem's output channels
    if isinstance(m.conv1, nn.Conv2d):
        stem = [("conv1", m.conv1)]
    else:
        stem = [(f"conv1.{n}", c) for n, c in m.conv1.named_children() if isinstance(c, (nn.Conv2d, nn.BatchNorm2d))]
    n_convs = sum(isinstance(c, nn.Conv2d) for _, c in stem)
    depth, inp, g = 0, None, None
    for name, mod in stem:
        if isinstance(mod, nn.Conv2d):
            g = prev if depth == n_convs - 1 else f"stem{depth}"
            _conv(ann, name, mod, g, inp, depth)
            inp, depth = g, depth + 1
        else:
            _bn(ann, name, g, depth - 1)
    _bn(ann, "bn1", prev, depth - 1)
    s = 0
    while hasattr(m, f"layer{s + 1}"):
        stream = f"stage{s}.stream"
        for b, blk in enumerate(getattr(m, f"layer{s + 1}")):
            p = f"layer{s + 1}.{b}"
            inp = prev
            out = stream if (blk.downsample is not None or b > 0) else prev  # no re-projection: same stream
            if blk.downsample is not None:
                mods = list(blk.downsample.named_children())
                conv = next((n, c) for n, c in mods if isinstance(c, nn.Conv2d))
                norm = next((n, c) for n, c in mods if isinstance(c, nn.BatchNorm2d))
                _conv(ann, f"{p}.downsample.{conv[0]}", conv[1], out, inp, depth)
                _bn(ann, f"{p}.downsample.{norm[0]}", out, depth)
            convs = [n for n in ("conv1", "conv2", "conv3") if isinstance(getattr(blk, n, None), nn.Conv2d)]
            mids = [f"stage{s}.block{b}.mid"] if len(convs) == 2 else [f"stage{s}.block{b}.mid1", f"stage{s}.block{b}.mid2"]
            groups = mids + [out]
            for i, (name, g) in enumerate(zip(convs, groups)):
                _conv(ann, f"{p}.{name}", getattr(blk, name), g, inp, depth + i)
                _bn(ann, f"{p}.bn{i + 1}", g, depth + i)
                inp = g
            depth += len(convs)
            prev = out
        s += 1
    if isinstance(getattr(m, "fc", None), nn.Linear):
        ann["fc.weight"] = ("linear", depth, (None, prev), ())
        ann["fc.bias"] = ("linear", depth, (None,), ())
    return ann


@ARCHS.register("resnet")
def resnet(config: dict) -> Built:
    import timm
    from timm.models.resnet import BasicBlock, Bottleneck

    kw = resnet_kwargs(config)
    kw["block"] = BasicBlock if kw["block"] == "basic" else Bottleneck
    m = timm.create_model("resnet18", pretrained=False, **kw)
    return Built(m, spec_from_module(m, resnet_annotations(m)))


# --- vit ---------------------------------------------------------------------------------------
class SplitQKVAttention(nn.Module):
    """timm ``Attention`` with separate q/k/v projections (same function, spec-friendly weights)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_layer=None, **_: object) -> None:
        super().__init__()
        if qk_norm or scale_norm:
            raise UnknownEntry("vit: qk_norm / scale_norm attention is not supported")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_: object) -> torch.Tensor:
        b, n, d = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, H, N, head_dim)
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        o = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(b, n, d)))


def split_qkv(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm fused ``attn.qkv`` (rows [q | k | v]) -> ``attn.q``/``attn.k``/``attn.v``; other entries unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if ".attn.qkv." in name:
            base, part = name.split(".attn.qkv.")
            for key, chunk in zip("qkv", t.chunk(3, dim=0)):
                out[f"{base}.attn.{key}.{part}"] = chunk.clone()
        else:
            out[name] = t
    return out


def vit_kwargs(config: Mapping) -> dict:
    c, h, w = list(config["input_shape"])[:3]
    return dict(img_size=(int(h), int(w)), patch_size=int(config.get("patch_size", 2 if max(h, w) <= 16 else 4)),
                in_chans=int(c), num_classes=int(config["n_classes"]), embed_dim=int(config.get("embed_dim", 16)),
                depth=int(config.get("depth", 2)), num_heads=int(config.get("num_heads", 2)),
                mlp_ratio=float(config.get("mlp_ratio", 2.0)), qkv_bias=bool(config.get("qkv_bias", True)),
                class_token=bool(config.get("class_token", True)), global_pool=config.get("global_pool", "token"),
                drop_rate=float(config.get("dropout", 0.0)),
                # ingested ViTs: reg_tokens, no_embed_class, pre_norm, fc_norm, init_values as timm names them
                **dict(config.get("timm_kwargs", {})))


def vit_annotations(m: nn.Module) -> dict:
    """Spec annotations of a timm VisionTransformer whose blocks use ``SplitQKVAttention``."""
    R = "residual"
    ann: dict = {}
    for tok in ("cls_token", "reg_token"):
        if getattr(m, tok, None) is not None:
            ann[tok] = ("cls_token", 0, (None, None, R), ())
    if getattr(m, "pos_embed", None) is not None:
        ann["pos_embed"] = ("pos_embedding", 0, (None, None, R), ())
    _conv(ann, "patch_embed.proj", m.patch_embed.proj, R, None, 0)

    def norm(name: str, mod: nn.Module, layer: int) -> None:
        if isinstance(mod, nn.LayerNorm):
            ann[f"{name}.weight"] = ("norm", layer, (R,), ())
            if mod.bias is not None:
                ann[f"{name}.bias"] = ("norm", layer, (R,), ())

    def linear(name: str, mod: nn.Linear, kind: str, layer: int, out: str | None, inp: str | None,
               blocks: tuple[int, int] = (1, 1)) -> None:
        ann[f"{name}.weight"] = (kind, layer, (out, inp), blocks)
        if mod.bias is not None:
            ann[f"{name}.bias"] = (kind, layer, (out,), blocks[:1])

    norm("norm_pre", m.norm_pre, 0)
    for i, blk in enumerate(m.blocks):
        p, a, f = f"blocks.{i}", 1 + 2 * i, 2 + 2 * i
        if not isinstance(blk.attn, SplitQKVAttention):
            raise BadWeights(f"vit: block {i} attention is {type(blk.attn).__name__}, expected split q/k/v")
        heads, hd = f"blocks.{i}.heads", blk.attn.head_dim
        norm(f"{p}.norm1", blk.norm1, a)
        for key, kind in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v")):
            linear(f"{p}.attn.{key}", getattr(blk.attn, key), kind, a, heads, R, (hd, 1))
        linear(f"{p}.attn.proj", blk.attn.proj, "attn_o", a, R, heads, (1, hd))
        norm(f"{p}.norm2", blk.norm2, f)
        linear(f"{p}.mlp.fc1", blk.mlp.fc1, "linear", f, f"blocks.{i}.mlp", R)
        linear(f"{p}.mlp.fc2", blk.mlp.fc2, "linear", f, R, f"blocks.{i}.mlp")
        for ls, layer in (("ls1", a), ("ls2", f)):
            if hasattr(getattr(blk, ls), "gamma"):
                ann[f"{p}.{ls}.gamma"] = ("norm", layer, (R,), ())
    top = 1 + 2 * len(m.blocks)
    norm("norm", m.norm, top)
    norm("fc_norm", m.fc_norm, top)
    if isinstance(m.head, nn.Linear):
        linear("head", m.head, "linear", top, None, R)
    return ann


@ARCHS.register("vit")
def vit(config: dict) -> Built:
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, attn_layer=SplitQKVAttention, **vit_kwargs(config))
    return Built(m, spec_from_module(m, vit_annotations(m)))
