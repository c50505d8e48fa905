"""``zoo weightnet train`` and ``zoo weightnet predict``."""
from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import AtOption, LakeOption

console = Console()
wn = typer.Typer(help="Train WeightNet on the zoo and write its predictions back.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(wn, name="weightnet")


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@wn.command("train")
def train(targets: str = typer.Option("test_accuracy", "--targets", "-t", help="Comma-separated label names"),
          at: Optional[str] = AtOption, where: Optional[str] = typer.Option(None, "--where", help="SQL over models"),
          config: Optional[str] = typer.Option(None, "--config", help="WeightNetConfig as a JSON file"),
          split: str = typer.Option("random", "--split", help="random | family:NAME | arch:NAME | width:MAX"),
          epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the config's epochs"),
          seed: Optional[int] = typer.Option(None, "--seed", help="Split and training seed (default: the config's)"),
          device: str = typer.Option("cpu", "--device"),
          runs_dir: Optional[str] = typer.Option(None, "--runs-dir", envvar="ZOO_RUNS", help="Checkpoints go here"),
          lake: Optional[str] = LakeOption) -> None:
    """Train WeightNet on the labeled models of a snapshot; prints test metrics and the run id."""
    import dataclasses

    from storage.lake import Lake
    from weightnet.config import WeightNetConfig
    from weightnet.data import DatasetConfig
    from weightnet.train import train_weightnet

    cfg = WeightNetConfig.from_file(config) if config else WeightNetConfig()
    cfg = dataclasses.replace(cfg, **({"seed": seed} if seed is not None else {}),
                              **({"epochs": epochs} if epochs else {}))
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    dataset = DatasetConfig(at=at, where=where, targets=names, split=split, seed=cfg.seed)
    with Lake.open(lake) as lk, _bar() as bar:
        task = bar.add_task("training WeightNet (epochs)", total=cfg.epochs)
        result = train_weightnet(lk, dataset, cfg, device,
                                 progress=lambda i, n: bar.update(task, completed=i, total=n), runs_dir=runs_dir)
    m = result.metrics
    console.print(f"trained on {m['n_train']} models (val {m['n_val']}, test {m['n_test']}) at snapshot "
                  f"{result.snapshot_id} in {m['epochs']} epochs; best val loss {m['best_val_loss']:.4f}"
                  + (f" (predicting the mean: {m['val_mean_baseline_loss']:.4f})" if m.get("val_mean_baseline_loss") else ""))
    for t, v in m["test"].items():
        console.print(f"  {t}: test MAE {v['mae']:.4f}  RMSE {v['rmse']:.4f}  R2 {v['r2']:.3f}  "
                      f"Spearman {v['spearman']:.3f}  coverage {v['coverage']:.2f} (n={v['n']})")
    console.print(f"run {result.run_id}  checkpoint {result.checkpoint}")


@wn.command("predict")
def predict(run: str = typer.Option(..., "--run", help="A completed weightnet run id"),
            where: Optional[str] = typer.Option(None, "--where", help="SQL over models (default: all)"),
            device: str = typer.Option("cpu", "--device"),
            runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="Look for checkpoints here instead"),
            lake: Optional[str] = LakeOption) -> None:
    """Predict the run's targets for stored models and write them to the predictions table."""
    from storage.lake import Lake
    from weightnet.predict import predict_zoo

    with Lake.open(lake) as lk, _bar() as bar:
        task = bar.add_task("predicting", total=None)
        n = predict_zoo(lk, run, where, device, runs_dir,
                        progress=lambda i, total: bar.update(task, completed=i, total=total))
    console.print(f"wrote {n} predictions of run {run}; query them with: zoo sql \"SELECT * FROM predictions "
                  f"WHERE run_id = '{run}'\"")
    if n == 0:
        console.print("no model matched" + (f" {json.dumps(where)}" if where else ""))
