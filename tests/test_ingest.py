"""Ingestion from files, timm and a local folder laid out like the Hugging Face Hub cache; untrusted
files are refused with clear errors, nothing is unpickled, and a refused model leaves the lake unchanged."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from core.errors import BadWeights, ZooError
from storage.writes import read_models, read_weights
from zoo.archs import build, load_module
from zoo.ingest import IngestLimits, ingest_file, ingest_hf, ingest_timm, read_weights_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
MLP = {"input_shape": [1, 8, 8], "n_classes": 10, "width": 8, "depth": 2}


def mlp_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build("mlp", MLP).module.state_dict()


def assert_same_logits(stored_model, state, reference: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(load_module(stored_model, state)(x), reference.eval()(x), atol=1e-5, rtol=1e-4)


def lake_state(lake) -> tuple:
    snaps = tuple(s["snapshot_id"] for s in lake.snapshots())
    return snaps, tuple(lake.fetch("SELECT model_id, name, data FROM lake.main.tensors ORDER BY ALL"))


def assert_refused_unchanged(lake, fn, match: str) -> None:
    before = lake_state(lake)
    with pytest.raises(ZooError, match=match):
        fn()
    assert lake_state(lake) == before


# --- files -------------------------------------------------------------------------------------
def test_safetensors_file_round_trips_and_reingest_is_a_noop(lake, tmp_path) -> None:
    state = mlp_state()
    save_file(state, tmp_path / "m.safetensors")
    r = ingest_file(lake, tmp_path / "m.safetensors", "mlp", MLP)
    assert r.new and r.source == "file" and r.arch == "mlp"
    again = ingest_file(lake, tmp_path / "m.safetensors", "mlp", MLP)
    assert again.model_id == r.model_id and not again.new and again.snapshot_id == r.snapshot_id
    rec = read_models(lake)[0]
    assert rec.source == "file" and rec.spec.n_params == r.n_params
    ref = build("mlp", MLP).module
    ref.load_state_dict(state)
    assert_same_logits(rec, read_weights(lake, [r.model_id])[r.model_id], ref, torch.rand(4, 1, 8, 8))


@pytest.mark.parametrize("nest", [False, True])
def test_torch_checkpoint_loads_weights_only(lake, tmp_path, nest: bool) -> None:
    state = mlp_state(1)
    torch.save({"state_dict": state, "epoch": 3} if nest else state, tmp_path / "m.pt")
    r = ingest_file(lake, tmp_path / "m.pt", "mlp", MLP)
    back = read_weights(lake, [r.model_id])[r.model_id]
    assert all(torch.equal(back[k], v) for k, v in state.items())


class Evil:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle", "disguised-safetensors"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(lake, tmp_path, fmt: str) -> None:
    import pickle

    marker = tmp_path / "pwned"
    payload = {"layers.0.weight": Evil(marker)}
    path = tmp_path / ("evil.safetensors" if fmt == "disguised-safetensors" else "evil.pt")
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert_refused_unchanged(lake, lambda: ingest_file(lake, path, "mlp", MLP), "evil")
    assert not marker.exists()


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("header,data,match", [
    ({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}}, b"\0" * 16, "declares shape"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}, b"\0" * 16, "needs 16 bytes"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"\0" * 16, "needs 16 bytes"),
    ({"w": {"dtype": "X99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "dtype"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, "shape"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "overlap"),
])
def test_bad_safetensors_headers_are_refused_before_allocation(lake, tmp_path, header, data, match) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    assert_refused_unchanged(lake, lambda: ingest_file(lake, path, "mlp", MLP), match)


def test_header_length_and_file_size_limits(tmp_path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    with pytest.raises(BadWeights, match="declared header"):
        read_weights_file(path)
    save_file(mlp_state(), tmp_path / "ok.safetensors")
    with pytest.raises(BadWeights, match="limit"):
        read_weights_file(tmp_path / "ok.safetensors", IngestLimits(max_file_bytes=100))
    with pytest.raises(BadWeights, match="limit"):
        read_weights_file(tmp_path / "ok.safetensors", IngestLimits(max_tensor_bytes=40))


def test_truncated_file_is_refused(lake, tmp_path) -> None:
    save_file(mlp_state(), tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 40])
    assert_refused_unchanged(lake, lambda: ingest_file(lake, tmp_path / "cut.safetensors", "mlp", MLP),
                             "truncated")


@pytest.mark.parametrize("corrupt,match", [("nan", "NaN"), ("shape", "shape"), ("extra", "not in"), ("missing", "missing")])
def test_invalid_weights_are_refused_and_the_lake_is_unchanged(lake, tmp_path, corrupt: str, match: str) -> None:
    ingest_file(lake, _saved(tmp_path / "ok.safetensors", mlp_state(2)), "mlp", MLP)
    state = mlp_state(3)
    if corrupt == "nan":
        state["head.weight"][0, 0] = float("nan")
    elif corrupt == "shape":
        state["head.weight"] = torch.zeros(10, 9)
    elif corrupt == "extra":
        state["surprise"] = torch.zeros(2)
    else:
        del state["head.bias"]
    path = _saved(tmp_path / "bad.safetensors", state)
    assert_refused_unchanged(lake, lambda: ingest_file(lake, path, "mlp", MLP), match)


def _saved(path: pathlib.Path, state: dict) -> pathlib.Path:
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def test_missing_arch_config_is_named(lake, tmp_path) -> None:
    path = _saved(tmp_path / "m.safetensors", mlp_state())
    assert_refused_unchanged(lake, lambda: ingest_file(lake, path, "mlp", {"width": 8}), "input_shape")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=300), prefix=st.sampled_from([b"", struct.pack("<Q", 20), b"PK\x03\x04", b"\x80\x02"]))
def test_random_bytes_always_end_in_a_clear_error(tmp_path, blob: bytes, prefix: bytes) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(prefix + blob)
    with pytest.raises(BadWeights):
        read_weights_file(path)


# --- the hub cache layout ----------------------------------------------------------------------
def hub_repo(cache: pathlib.Path, repo_id: str, files: pathlib.Path, commit: str = "a" * 40) -> None:
    """models--org--name/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main}, as the hub client writes."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    for f in files.iterdir():
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / sha)
        (repo / "snapshots" / commit / f.name).symlink_to(pathlib.Path("..", "..", "blobs", sha))
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """A hub cache with a tiny BERT classifier and a tiny timm ViT, plus the original modules."""
    import timm
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=16, num_labels=3)
    bert = BertForSequenceClassification(cfg).eval()
    bert.save_pretrained(root / "bert-src", safe_serialization=True)
    hub_repo(root / "cache", "org/tiny-bert", root / "bert-src")
    args = dict(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    timm.models.save_for_hf(vit, root / "vit-src", model_args=args, safe_serialization=True)
    (root / "vit-src" / "pytorch_model.bin").unlink(missing_ok=True)
    hub_repo(root / "cache", "org/tiny-vit", root / "vit-src", commit="b" * 40)
    return {"cache": root / "cache", "bert": bert, "vit": vit, "vit_dir": root / "vit-src"}


def test_hf_bert_from_the_hub_cache(lake, hub) -> None:
    r = ingest_hf(lake, "org/tiny-bert", cache_dir=str(hub["cache"]), local_files_only=True, seq_len=12)
    assert r.arch == "transformer" and r.source == "hf"
    rec = read_models(lake)[0]
    assert rec.train_config["commit"] == "a" * 40 and rec.arch_config["n_classes"] == 3
    ids = torch.randint(0, 30, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_module(rec, read_weights(lake, [r.model_id])[r.model_id])(ids)
        torch.testing.assert_close(ours, hub["bert"](input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert {p.kind for p in rec.spec.params} >= {"attn_q", "attn_k", "attn_v", "attn_o", "embedding", "pos_embedding"}
    pinned = ingest_hf(lake, "org/tiny-bert", revision="a" * 40, cache_dir=str(hub["cache"]), local_files_only=True,
                       seq_len=12)
    assert pinned.model_id == r.model_id and not pinned.new  # same weights: re-ingest is a no-op
    assert_refused_unchanged(lake, lambda: ingest_hf(lake, "org/tiny-bert", revision="v9", cache_dir=str(hub["cache"]),
                                                     local_files_only=True), "v9")


def test_hf_timm_vit_from_the_hub_cache(lake, hub) -> None:
    r = ingest_hf(lake, "org/tiny-vit", cache_dir=str(hub["cache"]), local_files_only=True)
    assert r.arch == "vit"
    rec = read_models(lake)[0]
    x = torch.rand(3, 1, 8, 8)
    assert_same_logits(rec, read_weights(lake, [r.model_id])[r.model_id], hub["vit"], x)


def test_unknown_repo_offline_is_a_clear_error(lake, hub) -> None:
    assert_refused_unchanged(lake, lambda: ingest_hf(lake, "org/nope", cache_dir=str(hub["cache"]),
                                                          local_files_only=True), "org/nope")


def test_timm_resnet_from_a_local_dir(lake, tmp_path) -> None:
    import timm

    args = dict(layers=(1, 1, 1, 1), channels=(4, 4, 8, 8), stem_width=4, stem_type="deep", in_chans=1, num_classes=5)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, **args).eval()
    timm.models.save_for_hf(model, tmp_path / "rn", model_args=args, safe_serialization=True)
    r = ingest_timm(lake, f"local-dir:{tmp_path / 'rn'}")
    assert r.arch == "resnet" and r.source == "timm"
    rec = read_models(lake)[0]
    assert rec.arch_config["channels"] == [4, 4, 8, 8]
    assert_same_logits(rec, read_weights(lake, [r.model_id])[r.model_id], model, torch.rand(2, 1, 16, 16))


def test_cli_ingests_offline_from_the_hub_cache(hub, tmp_path) -> None:
    """HF_HUB_OFFLINE/HF_HUB_CACHE must be set before huggingface_hub is imported: a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub["cache"]), "HF_HOME": str(tmp_path / "hf"),
           "ZOO_LAKE": str(tmp_path / "lake")}
    # three CLI invocations in one fresh process (imports dominate); each records its exit status
    script = (
        "import json, sys\nfrom cli.main import main\ncodes = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    sys.argv = ['zoo', *argv]\n"
        "    try:\n        main(); codes.append(0)\n"
        "    except SystemExit as e:\n        codes.append(e.code)\n"
        "print(json.dumps(codes))\n")
    commands = [["ingest", "hf", "org/tiny-bert", "--seq-len", "8"], ["ingest", "timm", "hf-hub:org/tiny-vit"],
                ["ingest", "hf", "org/absent"]]
    out = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, 0, 2], out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "org/absent" in errors[0]
    from storage.lake import Lake

    with Lake.open(tmp_path / "lake", read_only=True) as lk:
        rows = lk.fetch("SELECT source, arch FROM lake.main.models ORDER BY arch")
    assert rows == [("hf", "transformer"), ("timm", "vit")]
