"""build_zoo and ``zoo build``: resumable, duplicate-free, deterministic, checkpoints linked by run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core.errors import UnknownEntry
from storage.lake import Lake
from storage.writes import read_models, read_weights
from zoo.archs import ARCHS, load_module
from zoo.build import build_zoo, population_family
from zoo.families import FAMILIES, Family
from zoo.sampling import TrainSpace
from zoo.datasets import DATASETS, load_dataset
from zoo.families import FAMILIES
from zoo.sampling import BadConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def assert_no_duplicates(lake: Lake) -> None:
    n, distinct = lake.fetch("SELECT count(*), count(DISTINCT model_id) FROM lake.main.models")[0]
    assert n == distinct
    n, distinct = lake.fetch("SELECT count(*), count(DISTINCT (model_id, name)) FROM lake.main.tensors")[0]
    assert n == distinct


def test_build_resumes_without_duplicates_and_reruns_are_noops(lake):
    first = build_zoo(lake, "digits-mlp", 2, seed=0, checkpoints=(1,))
    assert len(first.model_ids) == 2 and first.new_ids == first.model_ids
    second = build_zoo(lake, "digits-mlp", 4, seed=0, checkpoints=(1,))
    assert second.model_ids[:2] == first.model_ids  # the first members are reused, not retrained
    assert sorted(second.new_ids) == sorted(second.model_ids[2:])
    snap = lake.current_snapshot()
    again = build_zoo(lake, "digits-mlp", 4, seed=0, checkpoints=(1,))
    assert again.new_ids == [] and again.model_ids == second.model_ids and lake.current_snapshot() == snap
    assert_no_duplicates(lake)
    assert lake.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 4
    runs = lake.fetch("SELECT kind, status, metrics FROM lake.main.runs ORDER BY started_at")
    assert [(k, s) for k, s, _ in runs] == [("build", "completed")] * 2
    msgs = [s["message"] for s in lake.snapshots() if s["message"]]
    assert any(m.startswith(f"build {first.run_id}: digits-mlp members") for m in msgs)


def test_checkpoints_are_members_linked_by_their_training_run(lake):
    res = build_zoo(lake, "digits-mlp", 2, seed=3, checkpoints=(0, 1, 2))
    recs = read_models(lake)
    assert len(recs) == 6 and {r.model_id for r in recs} == set(res.model_ids)
    by_run: dict[str, list] = {}
    for r in recs:
        by_run.setdefault(r.run_id, []).append(r)
    assert len(by_run) == 2
    for run in by_run.values():
        run.sort(key=lambda r: r.epoch)
        assert [r.epoch for r in run] == [0, 1, 2] and run[0].step == 0 and run[1].step * 2 == run[2].step
        assert len({r.seed for r in run}) == 1 and "checkpoints" not in run[0].train_config
        states = read_weights(lake, [r.model_id for r in run])
        w = [states[r.model_id]["layers.0.weight"] for r in run]
        assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # training moved the weights


# Hyperparameters that learn digits in two epochs (Adam, lr 0.01, clean labels, all the data): here the
# build must reach far-above-chance accuracy, so a population trainer that stops learning fails the test.
LEARNS = Family("learning-mlp", "digits", "mlp",
                TrainSpace(optimizers=("adam",), lr=(0.01, 0.01), l2=(1e-8, 1e-8), inits=("he",), dropout=(0.0, 0.0),
                           train_fractions=(1.0,), label_noise=(0.0, 0.0), batch_sizes=(64,), epochs=2),
                arch_config={"width": 32, "depth": 2, "activation": "relu"})


def test_built_members_learn_the_task(lake, monkeypatch):
    monkeypatch.setitem(FAMILIES._entries, LEARNS.name, LEARNS)
    res = build_zoo(lake, LEARNS.name, 2, seed=0, checkpoints=(0, 2))
    splits = load_dataset("digits", 0)
    states = read_weights(lake, res.model_ids)
    acc = {}
    for r in read_models(lake):
        with torch.no_grad():
            logits = load_module(r, states[r.model_id])(splits.x_test)
        acc.setdefault(r.run_id, {})[r.epoch] = float((logits.argmax(-1) == splits.y_test).float().mean())
    assert len(acc) == 2
    for by_epoch in acc.values():
        assert by_epoch[0] < 0.3 and by_epoch[2] > 0.7, acc  # chance is 0.1: the two epochs taught it digits


def test_same_seed_gives_bit_identical_weights(tmp_path):
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        with Lake.open(tmp_path / name, create=True) as lk:
            res = build_zoo(lk, "digits-cnn", 2, seed=seed, checkpoints=(1,))
            weights.append((res.model_ids, read_weights(lk, res.model_ids)))
    (ids_a, wa), (ids_b, wb), (ids_c, wc) = weights
    assert ids_a == ids_b and set(ids_a).isdisjoint(ids_c)
    for mid in ids_a:
        assert all(torch.equal(wa[mid][k], wb[mid][k]) for k in wa[mid])
    assert not torch.equal(wa[ids_a[0]]["convs.0.weight"], wc[ids_c[0]]["convs.0.weight"])


def test_bad_requests_name_the_culprit(lake):
    with pytest.raises(UnknownEntry, match="no-such-family"):
        build_zoo(lake, "no-such-family", 1)
    with pytest.raises(BadConfig, match="checkpoint"):
        build_zoo(lake, "digits-mlp", 1, checkpoints=(999,))
    assert lake.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 0


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_builds_one_member(lake, family):
    fam = FAMILIES.get(family)
    if fam.dataset not in DATASETS or fam.arch not in ARCHS:
        pytest.skip(f"{fam.dataset} or {fam.arch} not registered yet")
    # population families train one epoch; plain-loop ones (slow on 2 cores) store their initialization
    epoch = 1 if population_family(fam) else 0
    res = build_zoo(lake, family, 1, seed=0, checkpoints=(epoch,))
    (rec,) = read_models(lake)
    assert rec.family == family and rec.arch == fam.arch and rec.epoch == epoch and res.new_ids == [rec.model_id]
    state = read_weights(lake, [rec.model_id])[rec.model_id]
    module = load_module(rec, state)  # the stored arch_config alone rebuilds the model
    x = load_dataset(fam.dataset, fam.dataset_seed).x_test[:4]
    with torch.no_grad():
        assert module(x).shape == (4, rec.arch_config["n_classes"])


def test_cli_builds_and_reports_errors_on_one_line(tmp_path):
    lake_dir = str(tmp_path / "cli-lake")
    ok = subprocess.run([sys.executable, "-m", "cli", "build", "--family", "digits-mlp", "--n", "2",
                         "--checkpoints", "1", "--lake", lake_dir, "--threads", "1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "2 new models" in ok.stderr
    bad = subprocess.run([sys.executable, "-m", "cli", "build", "--family", "nope", "--n", "2",
                          "--lake", lake_dir], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "nope" in bad.stderr
    with Lake.open(lake_dir, read_only=True) as lk:
        assert lk.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 2


def test_auto_population_size_follows_the_memory_budget(lake):
    from zoo.build import plan_build, population_memory

    fam = FAMILIES.get("digits-mlp")
    cfg = {**fam.arch_config, "input_shape": [1, 8, 8], "n_classes": 10}
    per_member = population_memory("mlp", cfg, 128)
    assert population_memory("mlp", cfg, 32) < per_member  # larger batches need more per member
    budget_mb = 3.5 * per_member / 2 ** 20  # room for 3 members per population
    units = plan_build(lake, "digits-mlp", 7, seed=0, checkpoints=(1,), memory_budget_mb=budget_mb)
    assert [len(u) for u in units] == [3, 3, 1] and sorted(i for u in units for i in u) == list(range(7))
    assert [len(u) for u in plan_build(lake, "digits-mlp", 7, checkpoints=(1,))] == [7]  # default budget: one
    assert [len(u) for u in plan_build(lake, "digits-mlp", 7, checkpoints=(1,), population_size="2")] == [2, 2, 2, 1]
    with pytest.raises(BadConfig, match="population-size.*'lots'"):
        plan_build(lake, "digits-mlp", 7, checkpoints=(1,), population_size="lots")
    build_zoo(lake, "digits-mlp", 3, seed=0, checkpoints=(1,))
    assert sorted(i for u in plan_build(lake, "digits-mlp", 7, checkpoints=(1,)) for i in u) == [3, 4, 5, 6]


@pytest.mark.slow
def test_sharded_build_on_dask_equals_the_one_process_build(prefect_server, tmp_path):
    """Populations dealt to 2 shards on a 2-worker Dask LocalCluster, SQLite catalog: the same model
    ids and the same bits as build_zoo in one process; each shard keeps its own run and snapshots."""
    from flows.build import build_zoo as build_flow

    with Lake.open(tmp_path / "one", create=True) as lk:
        ref = build_zoo(lk, "digits-mlp", 5, seed=0, checkpoints=(1,), population_size=2)
        ref_weights = read_weights(lk, ref.model_ids)
    dask_lake = "sqlite:" + str(tmp_path / "dask")
    Lake.open(dask_lake, create=True).close()
    out = build_flow(family="digits-mlp", n=5, seed=0, checkpoints=[1], lake=dask_lake, population_size=2,
                     shards=2, runner="dask")
    assert len(out["shards"]) == 2 and sorted(out["new_ids"]) == sorted(ref.model_ids) == sorted(out["model_ids"])
    with Lake.open(dask_lake, read_only=True) as lk:
        got = read_weights(lk, ref.model_ids)
        runs = lk.fetch("SELECT run_id, status, config FROM lake.main.runs")
        msgs = [s["message"] for s in lk.snapshots() if s["message"] and " members " in s["message"]]
        assert_no_duplicates(lk)
    for mid in ref.model_ids:
        assert all(torch.equal(ref_weights[mid][k], got[mid][k]) for k in ref_weights[mid])
    assert sorted(r[0] for r in runs) == sorted(out["shards"]) and {r[1] for r in runs} == {"completed"}
    assert sorted(json.loads(r[2])["shard"] for r in runs) == [[0, 2], [1, 2]]
    assert {m.split(":")[0] for m in msgs} == {f"build {r}" for r in out["shards"]}  # 3 populations, 2 shards
    assert len(msgs) == 3


@pytest.mark.slow
def test_cli_shards_on_threads(prefect_server, tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    res = CliRunner().invoke(app, ["build", "--family", "digits-mlp", "--n", "3", "--checkpoints", "1",
                                   "--population-size", "1", "--shards", "2", "--runner", "threads",
                                   "--lake", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "3 new models in 2 shards" in res.output
    with Lake.open(tmp_path / "cli", read_only=True) as lk:
        assert lk.fetch("SELECT count(*) FROM lake.main.models")[0][0] == 3
        assert len(lk.fetch("SELECT run_id FROM lake.main.runs")) == 2
