"""Evaluation units in forked worker processes: ``zoo evaluate --workers N``.

A unit is one (experiment, seed): its split and every predictor fitted on it. Units are dealt to N
processes and their outcomes merged in the serial order, so the report is the one a serial run writes
(same scores, same notes), only sooner: the predictors are small and fit fastest on one thread each, so
N processes use N cores where one process with N threads would not.

Why fork, not spawn: an experiment's split is a closure over the zoo's samples (thousands of state
dicts), which neither pickles cheaply nor can be rebuilt in a child without opening the lake again (a
DuckDB-file catalog admits one writer). Forked children inherit the experiments; only (index, seed)
goes in and an ``Outcome`` comes back. Forking a process whose OpenMP pool has run is safe only while
the child stays on one thread (a child that starts a multi-threaded OpenMP region hangs: measured
here), so every worker is pinned to one torch thread and one BLAS/OpenMP thread. And once autograd
has started its device threads in the parent, torch refuses backward in forked children; a forked probe
checks that first, and the units run in one process (with a note) when it fails.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

import torch

from evaluation import experiments
from evaluation.experiments import Experiment, Outcome, kept_test, merge, n_fits, n_units, run_unit, shared_fits

_EXPERIMENTS: Sequence[Experiment] = ()  # set in the parent just before forking; children read their copy
_SHARED: dict = {}  # experiments.shared_fits of them, likewise


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods()


def _backward_in_child() -> None:
    try:
        x = torch.ones(2, requires_grad=True)
        (x * x).sum().backward()
    except RuntimeError:
        os._exit(1)
    os._exit(0)


def autograd_survives_fork() -> bool:
    """Whether a forked child of this process can run a backward pass. Once autograd has started its
    worker threads here (measured: after a ``torch.compile``d backward; by torch's design also after a
    backward where it sees a GPU), torch refuses autograd in forked children; a forked probe finds out."""
    probe = mp.get_context("fork").Process(target=_backward_in_child)
    probe.start()
    probe.join(60)
    if probe.exitcode is None:
        probe.kill()
        probe.join()
    return probe.exitcode == 0


def _init() -> None:
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # without threadpoolctl the libraries keep their defaults
        pass


def _unit(index: int, seed: int, first_seed: int, device: str) -> Outcome:
    out = run_unit(_EXPERIMENTS, index, seed, first_seed, device, _SHARED)
    # a kept predictor goes back pickled here (one that cannot be is dropped with a note, not the unit)
    # and without its test samples (thousands of state dicts would make the trip slower than the fit:
    # measured); the parent takes them from its own copy of the split
    for key, (pred, _test) in list(out.fitted.items()):
        try:
            out.fitted[key] = (pickle.dumps(pred), None)
        except Exception as e:
            del out.fitted[key]
            out.notes.append(f"{key[0]}: fitted {key[1]} not kept for interpretation "
                             f"(does not pickle across --workers: {type(e).__name__})")
    return out


def _with_tests(exps: Sequence[Experiment], index: int, first_seed: int, part: Outcome) -> Outcome:
    if part.fitted:
        test = kept_test(exps[index].split_fn(first_seed)[2])
        part.fitted = {key: (pickle.loads(blob), test) for key, (blob, _none) in part.fitted.items()}
    return part


def run_forked(exps: Sequence[Experiment], seeds: Sequence[int], device: str,
               progress: Callable[[int, int], None] | None, workers: int) -> Outcome:
    """``experiments.run`` over ``workers`` forked processes; falls back to one process (with a note)
    where the platform cannot fork."""
    why = ("this platform cannot fork" if not can_fork() else
           "" if autograd_survives_fork() else
           "autograd's threads already run in this process, so forked children could not train")
    if why:
        out = experiments.run(exps, seeds, device, progress, workers=1)
        out.notes.insert(0, f"--workers {workers}: {why}; ran in one process")
        return out
    if device != "cpu":
        raise ValueError(f"--workers > 1 runs on CPU only (got device {device!r}): "
                         "forked children cannot share a CUDA context")
    global _EXPERIMENTS, _SHARED
    units = [(i, seed) for i in range(len(exps)) for seed in seeds]
    parts: dict[int, Outcome] = {}
    _EXPERIMENTS, _SHARED = exps, shared_fits(exps)
    total, done = n_units(exps, seeds, _SHARED), 0
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_init) as ex:
            futures = {ex.submit(_unit, i, seed, seeds[0], device): k for k, (i, seed) in enumerate(units)}
            for fut in as_completed(futures):
                k = futures[fut]
                i, seed = units[k]
                try:
                    parts[k] = _with_tests(exps, i, seeds[0], fut.result())
                except BrokenProcessPool as e:  # a worker died (killed, out of memory): its units are failures
                    parts[k] = Outcome(failures=[f"{exps[i].name}: seed {seed} lost: worker process died ({e})"])
                except Exception as e:
                    parts[k] = Outcome(failures=[f"{exps[i].name}: seed {seed} failed: {type(e).__name__}: {e}"])
                done += n_fits(exps, i, _SHARED)
                if progress is not None:
                    progress(done, total)
    finally:
        _EXPERIMENTS, _SHARED = (), {}
    out = Outcome()
    for k in range(len(units)):
        merge(out, parts[k])
    return out
