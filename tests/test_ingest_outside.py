"""Any model in: torchvision (local weights file or the torch hub cache), any timm model, any transformers
model type from a hub-cache folder, torch.export programs and safetensors + the user's module. Each is
stored with its inferred spec, rebuilt to identical outputs, and labeled; all offline, on local fixtures."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch
from safetensors.torch import save_file

from core.errors import BadWeights, ZooError
from core.spec import ParamSpec, PermGroup, WeightSpec
from fixtures.hub_cache import hub_repo
from storage.writes import read_models, read_weights
from zoo.archs import load_module
from zoo.ingest import ingest_hf, ingest_timm
from zoo.ingest_outside import check_symmetry, ingest_program, ingest_torchvision, ingest_with_module

pytestmark = pytest.mark.usefixtures("torch_one_thread")
IMG = [3, 32, 32]


def stored(lake, model_id: str):
    rec = next(r for r in read_models(lake) if r.model_id == model_id)
    return rec, load_module(rec, read_weights(lake, [model_id])[model_id])


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=1e-5, rtol=1e-4)


def tv_model(name: str, **kw) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def test_torchvision_from_a_local_weights_file(lake, tmp_path) -> None:
    model = tv_model("mobilenet_v3_small", num_classes=10)
    save_file(model.state_dict(), tmp_path / "mnv3.safetensors")
    r = ingest_torchvision(lake, "mobilenet_v3_small", str(tmp_path / "mnv3.safetensors"), input_shape=IMG)
    assert r.new and r.arch == "torchvision" and r.source == "torchvision"
    rec, module = stored(lake, r.model_id)
    assert rec.arch_config["kwargs"] == {"num_classes": 10} and rec.arch_config["n_classes"] == 10
    assert len(rec.spec.groups) > 10 and rec.spec.n_params == sum(p.numel() for p in model.parameters())
    assert_same_outputs(module, model, torch.rand(2, *IMG))
    again = ingest_torchvision(lake, "mobilenet_v3_small", str(tmp_path / "mnv3.safetensors"), input_shape=IMG)
    assert again.model_id == r.model_id and not again.new


def test_torchvision_default_weights_from_the_torch_hub_cache(lake, tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    with pytest.raises(ZooError, match=os.path.basename(w.url)):  # not cached, and no network: named
        monkeypatch.setattr("torch.hub.download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
        ingest_torchvision(lake, "squeezenet1_1", "DEFAULT", input_shape=IMG)
    model = tv_model("squeezenet1_1")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / os.path.basename(w.url))
    r = ingest_torchvision(lake, "squeezenet1_1", "DEFAULT", input_shape=IMG)
    rec, module = stored(lake, r.model_id)
    assert rec.arch_config["n_classes"] == 1000 and rec.train_config["url"] == w.url
    assert_same_outputs(module, model, torch.rand(2, *IMG))


def test_unknown_torchvision_model_is_named(lake) -> None:
    with pytest.raises(ZooError, match="nope_net"):
        ingest_torchvision(lake, "nope_net", "DEFAULT")


def test_any_timm_model_from_a_local_dir(lake, tmp_path) -> None:
    import timm

    args = dict(num_classes=5, in_chans=3)
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False, **args).eval()
    timm.models.save_for_hf(model, tmp_path / "cx", model_args=args, safe_serialization=True)
    r = ingest_timm(lake, f"local-dir:{tmp_path / 'cx'}")
    assert r.arch == "timm_model" and r.source == "timm"
    rec, module = stored(lake, r.model_id)
    assert rec.arch_config["name"] == "test_convnext" and rec.spec.groups
    assert_same_outputs(module, model, torch.rand(2, *rec.arch_config["input_shape"]))


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """GPT-2 (LM head), DistilBERT (classifier) and a ViT image classifier in a hub-cache folder."""
    import transformers as tf

    root = tmp_path_factory.mktemp("hub")
    models = {
        "org/gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)),
        "org/distilbert": tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=16, num_labels=3)),
        "org/vit": tf.ViTForImageClassification(tf.ViTConfig(
            image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, num_labels=4)),
    }
    for i, (repo, m) in enumerate(models.items()):
        m.eval().save_pretrained(root / f"src{i}", safe_serialization=True)
        hub_repo(root / "cache", repo, root / f"src{i}")
    return {"cache": root / "cache", **models}


@pytest.mark.parametrize("repo,n_classes", [("org/gpt2", 0), ("org/distilbert", 3), ("org/vit", 4)])
def test_any_transformers_model_type_from_the_hub_cache(lake, hub, repo: str, n_classes: int) -> None:
    r = ingest_hf(lake, repo, cache_dir=str(hub["cache"]), local_files_only=True, seq_len=8)
    assert r.arch == "hf_model" and r.source == "hf"
    rec, module = stored(lake, r.model_id)
    assert rec.arch_config["n_classes"] == n_classes and rec.train_config["commit"] == "c" * 40
    kinds = {p.kind for p in rec.spec.params}
    assert {"norm", "attn_o"} <= kinds and rec.spec.groups
    shape = rec.arch_config["input_shape"]
    x = torch.randint(0, 40, (2, *shape)) if len(shape) == 1 else torch.rand(2, *shape)
    with torch.no_grad():
        ref = hub[repo](**({"input_ids": x} if len(shape) == 1 else {"pixel_values": x})).logits
        torch.testing.assert_close(module(x), ref, atol=1e-5, rtol=1e-4)


class SmallNet(torch.nn.Module):
    """A user's own module: conv, batch norm, residual, linear head."""

    def __init__(self, width: int = 6, n_classes: int = 3) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, width, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(width)
        self.mid = torch.nn.Conv2d(width, width, 3, padding=1)
        self.head = torch.nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = h + torch.relu(self.mid(h))
        return self.head(h.mean((2, 3)))


def test_safetensors_with_the_users_module(lake, tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallNet(width=5).eval()
    save_file(model.state_dict(), tmp_path / "net.safetensors")
    cfg = {"input_shape": [1, 8, 8], "kwargs": {"width": 5}}
    r = ingest_with_module(lake, tmp_path / "net.safetensors", f"{__name__}:SmallNet", cfg)
    rec, module = stored(lake, r.model_id)
    assert r.arch == "module" and rec.arch_config["n_classes"] == 3
    stem = rec.spec.param("stem.weight")
    assert stem.axes[0] == rec.spec.param("mid.weight").axes[0] == rec.spec.param("head.weight").axes[1]
    assert_same_outputs(module, model, torch.rand(2, 1, 8, 8))
    with pytest.raises(ZooError, match="nowhere"):
        ingest_with_module(lake, tmp_path / "net.safetensors", "nowhere.mod:Net", cfg)
    with pytest.raises(BadWeights, match="do not fit"):
        ingest_with_module(lake, tmp_path / "net.safetensors", f"{__name__}:SmallNet", {**cfg, "kwargs": {"width": 4}})


def test_torch_export_program(lake, tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.rand(3, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "static.pt2")
    with pytest.raises(BadWeights, match="dynamic batch"):  # labelers feed other batch sizes
        ingest_program(lake, tmp_path / "static.pt2")
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), tmp_path / "net.pt2")
    r = ingest_program(lake, tmp_path / "net.pt2")
    rec, module = stored(lake, r.model_id)
    assert r.arch == "exported" and rec.arch_config["input_shape"] == [1, 8, 8] and rec.arch_config["n_classes"] == 3
    assert rec.spec.param("stem.weight").axes[0] is not None
    assert_same_outputs(module, model, x)
    (tmp_path / "net.pt2").write_bytes(b"garbage")
    with pytest.raises(BadWeights, match="changed since"):
        load_module(rec, read_weights(lake, [r.model_id])[r.model_id])
    with pytest.raises(BadWeights, match="not a torch.export program"):
        ingest_program(lake, tmp_path / "net.pt2")


def test_a_spec_that_is_not_a_symmetry_is_refused() -> None:
    lin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    wrong = WeightSpec((ParamSpec("0.weight", (4, 3), "linear", "weight", 0, ("h", None)),
                        ParamSpec("0.bias", (4,), "linear", "bias", 0, ("h",)),
                        ParamSpec("2.weight", (2, 4), "linear", "weight", 1, (None, None)),  # coupling missing
                        ParamSpec("2.bias", (2,), "linear", "bias", 1, (None,))), (PermGroup("h", 4),))
    with pytest.raises(BadWeights, match="not a symmetry"):
        check_symmetry(lin, wrong, torch.rand(5, 3))


def write_cifar10(root: pathlib.Path, n: int = 6) -> None:
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:  # the real format: protocol-2 pickled dicts with bytes keys
            pickle.dump({b"data": g.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": [i % 10 for i in range(n)]},
                        fh, protocol=2)


def test_an_ingested_torchvision_model_is_labeled(lake, tmp_path, monkeypatch) -> None:
    from labeling.run import label_models

    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    write_cifar10(tmp_path / "data")
    model = tv_model("shufflenet_v2_x0_5", num_classes=10)
    save_file(model.state_dict(), tmp_path / "sn.safetensors")
    r = ingest_torchvision(lake, "shufflenet_v2_x0_5", str(tmp_path / "sn.safetensors"), dataset="cifar10")
    rec, _ = stored(lake, r.model_id)
    assert rec.arch_config["input_shape"] == [3, 32, 32] and rec.dataset == "cifar10"
    label_models(lake, [r.model_id], ["performance", "pgd", "efficiency"])
    got = dict(lake.fetch("SELECT property, value FROM labels WHERE model_id = ?", [r.model_id]))
    assert {"test_accuracy", "n_params", "flops"} <= set(got) and any(k.startswith("pgd") for k in got)
    assert got["n_params"] == sum(p.numel() for p in model.parameters()) and got["flops"] > 1e6


def test_cli_ingest_torchvision_show_groups_and_predict(tmp_path, monkeypatch) -> None:
    """The issue's done-when: ingest offline from a local weights file, `zoo show` lists the inferred
    groups, `zoo weightnet predict` predicts it (WeightNet trained on a few labeled MLPs)."""
    from typer.testing import CliRunner

    from storage.lake import Lake
    from storage.writes import Label, ModelRecord, write_labels, write_models
    from zoo.archs import build
    from cli.main import app

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    lake_dir = tmp_path / "lake"
    cfg = {"input_shape": [1, 8, 8], "n_classes": 10, "width": 8, "depth": 2}
    batch, labels = [], []
    for i in range(16):
        torch.manual_seed(i)
        b = build("mlp", cfg)
        batch.append((ModelRecord(f"mlp{i}", "tiny", "mlp", cfg, "digits", b.spec, run_id=f"mlp{i}"), b.module.state_dict()))
        labels.append(Label(f"mlp{i}", "test_accuracy", 0.1 + 0.05 * i, "test", 1))
    with Lake.open(lake_dir, create=True) as lk:
        write_models(lk, batch, "mlps")
        write_labels(lk, labels, "labels")
    save_file(tv_model("mobilenet_v3_small", num_classes=10).state_dict(), tmp_path / "w.safetensors")
    run = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    r = run.invoke(app, ["ingest", "torchvision", "mobilenet_v3_small", "--weights", str(tmp_path / "w.safetensors"),
                         "--input-shape", "3,32,32", "--lake", str(lake_dir)])
    assert r.exit_code == 0, r.output
    model_id = r.stdout.strip().splitlines()[-1]
    r = run.invoke(app, ["show", model_id, "--lake", str(lake_dir)])
    assert r.exit_code == 0 and "permutation groups" in r.stdout and "features.0.0.out" in r.stdout
    wn = tmp_path / "wn.json"
    wn.write_text(json.dumps({"d_model": 32, "heads": 4, "tokenizer": {"unit_budget": 16}}))
    r = run.invoke(app, ["weightnet", "train", "--lake", str(lake_dir), "--targets", "test_accuracy", "--where",
                         "arch = 'mlp'", "--config", str(wn), "--epochs", "2", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    run_id = r.stdout.split("run ")[-1].split()[0]
    r = run.invoke(app, ["weightnet", "predict", "--lake", str(lake_dir), "--run", run_id, "--where",
                         "arch = 'torchvision'", "--runs-dir", str(tmp_path / "runs")])
    assert r.exit_code == 0 and "wrote 1 predictions" in r.stdout, r.output
    with Lake.open(lake_dir, read_only=True) as lk:
        (value,), = lk.fetch("SELECT value FROM predictions WHERE model_id = ?", [model_id])
    assert value == value and abs(value) < 1e6  # finite


def test_cli_ingests_a_program_and_a_module_file(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    torch.manual_seed(0)
    model = SmallNet().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)),
                      tmp_path / "net.pt2")
    save_file(model.state_dict(), tmp_path / "net.safetensors")
    lake = str(tmp_path / "lake")
    r = CliRunner().invoke(app, ["ingest", "file", str(tmp_path / "net.pt2"), "--lake", lake])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["ingest", "file", str(tmp_path / "net.safetensors"), "--module", f"{__name__}:SmallNet",
                                 "--config", '{"input_shape": [1, 8, 8]}', "--lake", lake])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["ingest", "file", str(tmp_path / "net.safetensors"), "--lake", lake])
    assert r.exit_code != 0 and "--arch" in str(r.exception)
    from storage.lake import Lake

    with Lake.open(lake, read_only=True) as lk:
        assert sorted(a for (a,) in lk.fetch("SELECT arch FROM models")) == ["exported", "module"]
