"""``mathpe compare``: train several PEs with the same data, model, budget and seeds, then one table and plot.

Runs go to worker processes, one torch thread each (``--jobs``, default 2 = one per core on a 2-core CPU):
for small models, two single-threaded jobs side by side finish far sooner than one job on two threads.
With ``--launcher ray`` each run is a Ray task instead, so a study spreads over a cluster (``launch_runs``).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mathpe.errors import ConfigError
from mathpe.eval.report import markdown_table, percent, plot_accuracy_by_length, write_json, write_text
from mathpe.train.config import RunConfig, read_config_json

#: The eight methods mathpe was founded on, in the order the README's tables list them.
FOUNDING_PES: tuple[str, ...] = (
    "rope",
    "math_rope",
    "long_rope",
    "sinusoidal",
    "t5_relative",
    "diet",
    "alibi",
    "math_adaptive",
)
#: Where ``mathpe compare``'s runs go: ``--jobs`` local worker processes, or a Ray task each (``launch_runs``).
LAUNCHERS: tuple[str, ...] = ("local", "ray")

#: The README's embedded default: the founding eight plus the two baselines that matter most for arithmetic.
DEFAULT_PES: tuple[str, ...] = (*FOUNDING_PES, "nope", "abacus")


@dataclass(frozen=True)
class ComparePreset:
    """A named recipe: the PEs to compare and the command-line settings it stands for."""

    description: str
    pes: tuple[str, ...]
    arguments: dict[str, Any] = field(default_factory=dict)


#: Every registry PE, for the length-generalisation studies (a test keeps it equal to ``list_pes()``).
LENGTH_STUDY_PES: tuple[str, ...] = (
    *FOUNDING_PES,
    "nope",
    "learned",
    "abacus",
    "fire",
    "kerple",
    "position_coupling",
    "position_coupling_rope",
)

#: The length-generalisation studies' shared recipe (issue 17; the measurements behind it in ``results/``):
#: the tiny decoder on 1-8 digits, zero-padded operands with fused index hints (each hint and its digit one
#: token), 4,000 steps of batch 64, a probe every 250 steps for ``steps_to_95``, tests to 4x the length.
LENGTH_STUDY: dict[str, Any] = {
    "model_size": "tiny",
    "train_digits": (1, 8),
    "eval_lengths": (*range(1, 17), 20, 24, 32),
    "zero_pad": True,
    "index_hints": True,
    "fuse_hints": True,
    "train_samples": 200_000,
    "eval_samples": 100,
    "max_steps": 4000,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "warmup_steps": 100,
    "save_steps": 1000,
    "select_best": True,
    "probe_steps": 250,
    "probe_items": 200,
    "seeds": (0, 1, 2),
}

COMPARE_PRESETS: dict[str, ComparePreset] = {
    "quick": ComparePreset(
        "README's first command: tiny decoder, reversed addition trained on 1-3 digits, tested to 6 digits",
        DEFAULT_PES,
        {
            "model_size": "tiny",
            "datasets": ("addition",),
            "train_digits": (1, 3),
            "eval_lengths": tuple(range(1, 7)),
            "train_samples": 20_000,
            "eval_samples": 50,
            "max_steps": 1000,
            "batch_size": 64,
            "learning_rate": 1e-3,
            "save_steps": 500,
            "experiment_name": "compare-quick",
        },
    ),
    "addition-length": ComparePreset(
        "reversed addition with zero padding and fused index hints, train 1-8 digits, test 1-16, 20, 24, 32",
        LENGTH_STUDY_PES,
        {**LENGTH_STUDY, "datasets": ("addition",), "experiment_name": "addition-length"},
    ),
    "multiplication-length": ComparePreset(
        "second task: n-digit x 1-digit multiplication in the same format, train n = 1-8, test to 32",
        LENGTH_STUDY_PES,
        {
            **LENGTH_STUDY,
            "datasets": ("multiplication",),
            "second_digits": (1, 1),
            "experiment_name": "multiplication-length",
        },
    ),
}


def run_comparison(
    configs: list[RunConfig],
    *,
    seeds: tuple[int, ...],
    jobs: int,
    output_dir: Path,
    progress: bool = True,
    command: list[str] | None = None,
    launcher: str = "local",
    ray_address: str | None = None,
) -> str:
    """Run every config for every seed, ``jobs`` at a time; write comparison.json/.md and the plot.

    ``progress``: a line on stderr per finished run (PE, seed, headline score, seconds, runs done, ETA).
    ``command``: the command line, recorded in comparison.json. ``launcher``, ``ray_address``: where the runs
    go (``launch_runs``). Returns the Markdown table (also printed by the CLI).
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {jobs}")
    check_launcher(launcher, ray_address)
    for config in configs:  # before any run starts, not in each worker
        config.check_environment()
    if launcher == "ray":  # a worker on another node (or in another folder) finds the runs by absolute path
        output_dir = output_dir.resolve()
    runs = [
        dataclasses.replace(
            config,
            seed=seed,
            output_dir=str(output_dir / f"{config.pe}-seed{seed}"),
            experiment_name=f"{config.pe}-seed{seed}",
            # A Ray task asks for as many CPUs as its run has threads, so its runs always set them.
            threads=config.threads or (1 if jobs > 1 or launcher == "ray" else None),
        )
        for config in configs
        for seed in seeds
    ]
    claim_comparison_dir(output_dir, runs)
    environment = comparison_environment(runs[0].threads, jobs, command)  # before the code can change
    pace = f"{jobs} at a time" if launcher == "local" else "as Ray tasks"
    report = ProgressReport(len(runs), output_dir, pace) if progress else None
    started = time.monotonic()
    summaries = [_read_back(run) for run in runs]  # with --resume, finished runs are not run again
    if report:
        for summary in filter(None, summaries):
            report.finished(summary)
    todo = [index for index, summary in enumerate(summaries) if summary is None]
    for index, summary in launch_runs(
        [runs[i] for i in todo], jobs=jobs, launcher=launcher, ray_address=ray_address
    ):
        summaries[todo[index]] = summary
        if report:
            report.finished(summary)
    wall_seconds = time.monotonic() - started
    return write_comparison(
        output_dir, configs, summaries, wall_seconds=wall_seconds, jobs=jobs, environment=environment
    )


def check_launcher(launcher: str, ray_address: str | None) -> None:
    """Raise ``ConfigError`` for an unknown launcher, a Ray address without Ray, or Ray not installed."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher {launcher!r} is not one of: {', '.join(LAUNCHERS)}")
    if ray_address is not None and launcher != "ray":
        raise ConfigError(f"--ray_address {ray_address!r} needs --launcher ray, not {launcher!r}")
    if launcher == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError(
                '--launcher ray needs Ray, which is not installed: pip install "mathpe[ray]"'
            ) from None


def launch_runs(
    runs: list[RunConfig], *, jobs: int, launcher: str, ray_address: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index in runs, _run_one's summary)`` for each run as it finishes, in the order they finish.

    ``local``: in this process (``jobs`` 1) or ``jobs`` worker processes. ``ray``: a Ray task per run on the
    cluster at ``ray_address`` (default ``$RAY_ADDRESS``, else a local Ray instance with ``jobs`` runs'
    CPUs), each asking for its run's threads as CPUs and, where the cluster has GPUs, one GPU.
    """
    if launcher == "ray":
        yield from _ray_runs(runs, jobs=jobs, address=ray_address)
    elif jobs == 1:
        for index, run in enumerate(runs):
            yield index, _run_one(run)
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_one, run): index for index, run in enumerate(runs)}
            for future in as_completed(futures):
                yield futures[future], future.result()


def _ray_runs(
    runs: list[RunConfig], *, jobs: int, address: str | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``launch_runs`` on Ray; a task that dies (a worker killed, out of memory) is a failed run."""
    import ray

    if not runs:
        return
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here and address:
        ray.init(address=address)
    elif started_here:
        ray.init(num_cpus=jobs * runs[0].threads, include_dashboard=False)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0  # a run trains on CUDA where it has one
        # No retries: a retried run would find its own folder; --resume continues it from its checkpoint.
        task = ray.remote(max_retries=0)(_run_one)
        pending = {
            task.options(num_cpus=run.threads, num_gpus=gpus).remote(run): index
            for index, run in enumerate(runs)
        }
        while pending:
            [finished], _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(finished)
            try:
                yield index, ray.get(finished)
            except ray.exceptions.RayError as error:
                yield index, _failure(runs[index], error)
    finally:
        if started_here:
            ray.shutdown()


def comparison_environment(threads: int | None, jobs: int, command: list[str] | None) -> dict[str, Any]:
    """What the numbers depend on besides the settings: code, command, threads, machine and versions.

    ``make check-results`` compares a fresh run with a committed table exactly only when these match.
    """
    from mathpe.train.run import library_versions, machine, source_revision

    return {
        "source": source_revision(),
        "command": command,
        "threads_per_run": threads or torch.get_num_threads(),
        "jobs": jobs,
        "machine": machine(),
        "versions": library_versions(),
    }


class ProgressReport:
    """``mathpe compare``'s progress on stderr: a start line, then one line per finished run with an ETA."""

    def __init__(self, total: int, output_dir: Path, pace: str) -> None:
        """``pace``: how the runs go, e.g. "2 at a time"."""
        self.total, self.done, self.started = total, 0, time.monotonic()
        print(f"mathpe compare: {total} runs, {pace}, into {output_dir}", file=sys.stderr, flush=True)

    def finished(self, summary: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        if "error" in summary:
            outcome = f"failed ({summary['error'].splitlines()[0][:120]})"
        else:
            scores = [f"{m['headline']} {percent(m[m['headline']])}%" for m in summary["metrics"].values()]
            took = "read back" if summary.get("read_back") else f"{summary['seconds']:.0f} s"
            outcome = f"{', '.join(scores)} ({took})"
        # Runs take about the same time, so the mean so far times the runs left is a fair estimate.
        eta = elapsed / self.done * (self.total - self.done)
        print(
            f"[{self.done}/{self.total}] {summary['pe']} seed {summary['seed']}: {outcome}; "
            f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}",
            file=sys.stderr,
            flush=True,
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def claim_comparison_dir(output_dir: Path, runs: list[RunConfig]) -> None:
    """The run folder rules of ``mathpe train`` for a whole comparison, checked before any run starts.

    A folder holding a comparison (comparison.json or a run) is refused without ``--resume`` or
    ``--overwrite`` (which deletes it); with ``--resume`` every run already there must have the settings
    asked for now (``mathpe.train.run.claim_run_dir``).
    """
    from mathpe.train.run import (
        build_tasks,
        claim_run_dir,
        data_inputs,
        data_sha256,
        holds_run,
        identity_settings,
    )

    existing = (
        [path for path in output_dir.iterdir() if path.is_dir() and holds_run(path)]
        if output_dir.is_dir()
        else []
    )
    if not existing and not (output_dir / "comparison.json").exists():
        return
    resume, overwrite = runs[0].resume, runs[0].overwrite
    if overwrite:
        shutil.rmtree(output_dir)
    elif not resume:
        raise ConfigError(
            f"{output_dir} already holds a comparison; continue it with --resume or replace it with --overwrite"
        )
    else:
        digests: dict[str, str] = {}  # the PEs of one seed share their data: generate and hash it once
        for run in runs:
            if holds_run(run.run_dir):
                key = repr(data_inputs(run))
                if key not in digests:
                    digests[key] = data_sha256(build_tasks(run))
                finished = (run.run_dir / "metrics.json").is_file()  # only read back: no code versions mix
                claim_run_dir(run, identity_settings(run, digests[key]), trains=not finished)


def _read_back(config: RunConfig) -> dict[str, Any] | None:
    """With ``resume``, the summary of a run whose folder already holds its metrics; else None (run it).

    ``trained_at``: the commit and CPU of its config.json (None where a run from before config.json has none).
    """
    metrics_file = config.run_dir / "metrics.json"
    if not (config.resume and metrics_file.is_file()):
        return None
    finished = json.loads(metrics_file.read_text())
    config_file = config.run_dir / "config.json"
    saved = read_config_json(config_file) if config_file.is_file() else {}
    machine = saved.get("machine") or {}
    trained_at = {"commit": (saved.get("source") or {}).get("commit"), "cpu": machine.get("cpu"),
                  "cpu_capability": machine.get("cpu_capability")}  # fmt: skip
    return {"pe": config.pe, "seed": config.seed, "metrics": finished["datasets"], "train": finished["train"],
            "best": finished.get("best_checkpoint"), "read_back": True,
            "trained_at": trained_at if saved else None}  # fmt: skip


def _run_one(config: RunConfig) -> dict[str, Any]:
    """Worker: one run, summarised; a failure is recorded, not raised, so the other PEs still finish.

    With ``resume``, an unfinished run continues from its last checkpoint (finished ones: ``_read_back``).
    """
    from mathpe.train.run import run_experiment

    started = time.monotonic()
    try:
        result = run_experiment(config, progress=False)
    except Exception as error:  # a PE that fails must not hide the others' results
        return _failure(config, error)
    return {
        "pe": config.pe,
        "seed": config.seed,
        "metrics": result.metrics,
        "train": result.train,
        "best": result.best,
        "seconds": time.monotonic() - started,
    }


def _failure(config: RunConfig, error: Exception) -> dict[str, Any]:
    """The summary of a run that failed with ``error`` (raised in it, or its worker's end): the error's first
    line (a table cell) and the whole traceback."""
    first_line = str(error).partition("\n")[0]
    return {
        "pe": config.pe,
        "seed": config.seed,
        "error": f"{type(error).__name__}: {first_line}",
        "traceback": "".join(traceback.format_exception(error)),
    }


def write_comparison(
    output_dir: Path,
    configs: list[RunConfig],
    summaries: list[dict[str, Any]],
    *,
    wall_seconds: float,
    jobs: int,
    environment: dict[str, Any] | None = None,
) -> str:
    """Aggregate per PE (mean and best seed) and write comparison.json, comparison.md and the plot.

    ``environment``: ``comparison_environment``, stored in comparison.json and summed up in comparison.md.
    """
    datasets = configs[0].datasets
    probed = configs[0].probe_steps is not None
    by_pe: dict[str, list[dict[str, Any]]] = {}
    for summary in summaries:
        by_pe.setdefault(summary["pe"], []).append(summary)
    rows, curves, probe_cells = {}, {}, {}
    for pe, results in by_pe.items():
        ok = [r for r in results if "error" not in r]
        rows[pe] = {
            "seeds": [r["seed"] for r in results],
            "errors": [r["error"] for r in results if "error" in r],
        }
        for dataset in datasets:
            stats = _dataset_stats([r["metrics"][dataset] for r in ok]) if ok else {}
            with_best = [r["best"]["datasets"][dataset] for r in ok if r.get("best")]
            if with_best:
                stats["best_checkpoint"] = _dataset_stats(with_best)
            rows[pe][dataset] = stats
            if stats.get("by_length_mean"):
                curves[pe] = stats["by_length_mean"]
        train_seconds = [r["train"]["train_seconds"] for r in ok]
        rows[pe]["train_seconds_mean"] = statistics.fmean(train_seconds) if train_seconds else None
        rows[pe]["steps_mean"] = statistics.fmean(r["train"]["steps"] for r in ok) if ok else None
        probe_cells[pe] = []  # comparison.md's "steps to 95%" cell, with --probe_steps
        if probed:  # aligned with "seeds"; None: never reached 95% (or the run failed)
            rows[pe]["steps_to_95"] = [r.get("train", {}).get("steps_to_95") for r in results]
            probe_cells[pe] = [
                ", ".join(
                    "failed" if "error" in r else "never" if step is None else str(step)
                    for r, step in zip(results, rows[pe]["steps_to_95"], strict=True)
                )
            ]

    select_best = any(s.get("best") for s in summaries)
    seeds = sorted({s["seed"] for s in summaries})
    spread = len(seeds) > 1
    header = ["PE"]
    for dataset in datasets:
        header += [
            f"{dataset} overall (%)",
            f"{dataset} in-dist (%)",
            f"{dataset} longer (%)",
            "best seed (%)",
        ]
        if spread:
            header += ["in-dist worst seed (%)", "longer range (%)"]
        if select_best:
            header += ["best ckpt: in-dist (%)", "best ckpt: longer (%)"]
    header += ["steps", "train s"] + ["steps to 95% (per seed)"] * probed
    table = markdown_table(
        header,
        [_table_row(pe, rows[pe], datasets, select_best, spread) + probe_cells[pe] for pe in by_pe],
    )
    read_back = sum(bool(s.get("read_back")) for s in summaries)
    note = (
        f"\n{len(summaries)} runs ({len(by_pe)} PEs x {len(seeds)} seeds), {jobs} parallel jobs, "
        f"wall time {wall_seconds:.0f} s"
        + (f" ({read_back} runs read back from earlier, not timed)" if read_back else "")
        + ". Means over seeds; 'best seed' is the best seed's overall score"
        + ("; 'worst seed' and 'range' (min-max) are over the seeds" if spread else "")
        + (
            "; 'best ckpt' is the checkpoint with the lowest in-distribution validation loss"
            if select_best
            else ""
        )
        + (
            f"; 'steps to 95%' is the first step of a probe every {configs[0].probe_steps} steps with >= 95% "
            f"exact match on {configs[0].probe_items} held-out in-distribution problems ('never': not reached)"
            if probed
            else ""
        )
        + ".\n"
    )
    length_tables = "".join(_length_table(rows, dataset, spread) for dataset in datasets)
    places = {tuple(s["trained_at"].items()) for s in summaries if s.get("trained_at")}
    trained_at = [dict(place) for place in sorted(places, key=str)]
    made = (_environment_note(environment) if environment else "") + _read_back_note(trained_at)
    write_text(output_dir / "comparison.md", f"# PE comparison\n\n{table}{note}{made}{length_tables}")
    write_json(
        output_dir / "comparison.json",
        {
            "pes": rows,
            "datasets": list(datasets),
            "seeds": seeds,
            "wall_seconds": wall_seconds,
            "jobs": jobs,
            "settings": configs[0].to_dict() | {"pe": None, "seed": None},
            "environment": environment,
            "read_back_trained_at": trained_at,
        },
    )
    if curves:
        plot_accuracy_by_length(
            curves,
            output_dir / "accuracy_by_length.png",
            title=f"{', '.join(datasets)}: exact match by operand length (mean of {len(seeds)} seed(s))",
            train_max=configs[0].arithmetic.train_digits[1],
        )
    return table + note


def _environment_note(environment: dict[str, Any]) -> str:
    """One Markdown line: the commit, threads, CPU and versions the numbers were made with."""
    source, versions = environment["source"], environment["versions"]
    commit = "no git checkout" if source["commit"] is None else f"commit {source['commit'][:12]}"
    if source["clean"] is False:
        commit += " with uncommitted changes"
    return (
        f"\nMade at {commit}, {environment['threads_per_run']} torch thread(s) per run on "
        f"{environment['machine']['cpu']} ({environment['machine']['cpu_capability']}), torch {versions['torch']}, "
        f"transformers {versions['transformers']}, accelerate {versions['accelerate']}.\n"
    )


def _read_back_note(trained_at: list[dict[str, Any]]) -> str:
    """One Markdown line: where the runs read back were trained ("" when none say)."""
    if not trained_at:
        return ""
    places = "; ".join(
        f"{'no git checkout' if where['commit'] is None else 'commit ' + where['commit'][:12]} on "
        f"{where['cpu']} ({where['cpu_capability']})"
        for where in trained_at
    )
    return f"\nThe runs read back were trained at {places}.\n"


def _dataset_stats(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, best and per-seed values (in the order of ``metrics``) of the headline metric, its
    in/out-of-distribution parts and its length curve."""
    headline = metrics[0]["headline"]
    overall = [m[headline] for m in metrics]
    stats: dict[str, Any] = {
        "metric": headline,
        "overall_mean": statistics.fmean(overall),
        "overall_best": max(overall),
        "per_seed": overall,
    }
    for part in ("in_distribution", "out_of_distribution"):
        values = [m.get(f"{headline}_{part}") for m in metrics]
        if all(v is not None for v in values):
            stats[f"{part}_mean"] = statistics.fmean(values)
            stats[f"{part}_per_seed"] = values
    groups = metrics[0]["by_group"][headline]
    if all(str(group).isdigit() for group in groups):
        per_seed = {int(group): [m["by_group"][headline][group] for m in metrics] for group in groups}
        stats["by_length_mean"] = {length: statistics.fmean(values) for length, values in per_seed.items()}
        stats["by_length_best_seed"] = {length: max(values) for length, values in per_seed.items()}
        stats["by_length_per_seed"] = per_seed
    return stats


def _range(values: list[float] | None) -> str:
    """A Markdown cell: "min-max" in percent, one number when the seeds agree ("-" without values)."""
    if not values:
        return "-"
    low, high = percent(min(values)), percent(max(values))
    return low if low == high else f"{low}-{high}"


def _length_table(rows: dict[str, dict[str, Any]], dataset: str, spread: bool) -> str:
    """Markdown: the mean over seeds per evaluation length, a row per PE, and with ``spread`` the min-max over
    seeds in a second table ("" for non-arithmetic datasets)."""
    stats = {pe: row[dataset] for pe, row in rows.items() if row.get(dataset, {}).get("by_length_mean")}
    if not stats:
        return ""
    lengths = sorted({length for pe_stats in stats.values() for length in pe_stats["by_length_mean"]})
    header = ["PE", *map(str, lengths)]
    means = markdown_table(
        header,
        [[pe, *(percent(s["by_length_mean"].get(length)) for length in lengths)] for pe, s in stats.items()],
    )
    text = f"\n## {dataset}: exact match (%) by operand length, mean over seeds\n\n{means}"
    if spread:
        ranges = markdown_table(
            header,
            [
                [pe, *(_range(s["by_length_per_seed"].get(length)) for length in lengths)]
                for pe, s in stats.items()
            ],
        )
        text += f"\n## {dataset}: exact match (%) by operand length, min-max over seeds\n\n{ranges}"
    return text


def _table_row(
    pe: str, row: dict[str, Any], datasets: tuple[str, ...], select_best: bool, spread: bool
) -> list[str]:
    cells = [pe]
    for dataset in datasets:
        stats = row.get(dataset) or {}
        if not stats:
            cells += ["failed: " + "; ".join(row["errors"])[:80], "-", "-", "-"]
            cells += ["-", "-"] * spread + ["-", "-"] * select_best
            continue
        cells += [
            percent(stats["overall_mean"]),
            percent(stats.get("in_distribution_mean")),
            percent(stats.get("out_of_distribution_mean")),
            percent(stats["overall_best"]),
        ]
        if spread:
            in_distribution = stats.get("in_distribution_per_seed")
            worst = min(in_distribution) if in_distribution else None
            cells += [percent(worst), _range(stats.get("out_of_distribution_per_seed"))]
        if select_best:
            best = stats.get("best_checkpoint", {})
            cells += [
                percent(best.get("in_distribution_mean")),
                percent(best.get("out_of_distribution_mean")),
            ]
    cells += [
        "-" if row["steps_mean"] is None else f"{row['steps_mean']:.0f}",
        "-" if row["train_seconds_mean"] is None else f"{row['train_seconds_mean']:.0f}",
    ]
    return cells
