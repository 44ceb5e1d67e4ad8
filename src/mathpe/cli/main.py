"""The ``mathpe`` command: ``train``, ``eval``, ``compare``, ``pretrain``, ``swap-study``, ``verify``, ``bench``,
``export``, ``attention``.

Bad input (unknown PE or dataset, missing data, unreadable model, impossible precision or length, a run
folder that belongs to another run) ends with a one-line ``mathpe: error: ...`` and exit status 2, never a
traceback: every such error is a ``mathpe.errors.MathPEError``. Any other exception is a bug in mathpe or
below it and keeps its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mathpe.cli.arguments import add_dataclass_arguments, comma_list, dataclass_from_args, int_list
from mathpe.errors import MathPEError, error_summary
from mathpe.pe import list_pes
from mathpe.train.compare import COMPARE_PRESETS, LAUNCHERS
from mathpe.train.config import EVAL_OFFSETS_HELP, RunConfig

EXIT_USAGE = 2


def add_run_arguments(parser: argparse.ArgumentParser, *, skip: frozenset[str] = frozenset()) -> None:
    """A flag for every ``RunConfig`` field but ``skip`` (the founding flags of ``scripts/train_and_eval.py``
    among them), and ``--quiet``."""
    add_dataclass_arguments(parser, RunConfig, skip=skip)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_config_from(args: argparse.Namespace, pe: str) -> RunConfig:
    """The ``RunConfig`` of the parsed run flags, for PE ``pe``."""
    return dataclass_from_args(RunConfig, args, pe=pe)


def command_train(args: argparse.Namespace) -> int:
    import torch.distributed

    from mathpe.eval.report import percent
    from mathpe.train.run import run_experiment

    result = run_experiment(run_config_from(args, args.pe), progress=not args.quiet)
    for dataset, metrics in result.metrics.items():
        headline = metrics["headline"]
        line = f"{dataset}: {headline} {percent(metrics[headline])}%"
        if metrics.get(f"{headline}_in_distribution") is not None:
            line += (
                f" (in-distribution {percent(metrics[f'{headline}_in_distribution'])}%, "
                f"longer {percent(metrics[f'{headline}_out_of_distribution'])}%)"
            )
        print(line)
    if result.metrics:
        print(f"outputs: {result.run_dir}")
    # Under torchrun the Trainer leaves its process group open; gloo's worker threads then abort the
    # interpreter at exit now and then ("terminate called without an active exception"), so close it on
    # success (only then: on failure another rank may still be in a collective).
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def command_eval(args: argparse.Namespace) -> int:
    from mathpe.train.evaluate_run import evaluate_saved_run

    result = evaluate_saved_run(
        Path(args.run_dir),
        eval_samples=args.eval_samples,
        data_dir=args.data_dir,
        eval_offsets=args.eval_offsets,
    )
    for dataset, metrics in result.items():
        print(f"{dataset}: " + ", ".join(f"{m} {100 * metrics[m]:.1f}%" for m in metrics["by_group"]))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from mathpe.train.compare import DEFAULT_PES, run_comparison

    if args.pe == "default":
        pes = COMPARE_PRESETS[args.preset].pes if args.preset else DEFAULT_PES
    else:
        pes = list_pes() if args.pe == "all" else comma_list(args.pe)
    configs = [run_config_from(args, pe) for pe in pes]
    output_dir = Path(args.output_dir or f"runs/{args.experiment_name}")
    table = run_comparison(
        configs,
        seeds=args.seeds or (args.seed,),
        jobs=args.jobs,
        output_dir=output_dir,
        progress=not args.quiet,
        command=args.command_line,
        launcher=args.launcher,
        ray_address=args.ray_address,
    )
    print(table)
    return 0


def command_pretrain(args: argparse.Namespace) -> int:
    from mathpe.train.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    summary = pretrain(config, progress=not args.quiet)
    perplexities = ", ".join(f"{length}: {value:.2f}" for length, value in summary["ppl"].items())
    print(
        f"{summary['params'] / 1e6:.2f}M parameters, {summary['pretrain_tokens']:,} tokens, "
        f"{summary['train_seconds']:.0f} s; held-out perplexity by context {perplexities}"
    )
    print(f"outputs: {config.output_dir}/model")
    return 0


def command_swap_study(args: argparse.Namespace) -> int:
    from mathpe.train.swap_study import SwapStudyConfig, run_swap_study, summary_markdown

    config = SwapStudyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SwapStudyConfig)})
    print(summary_markdown(run_swap_study(config)))
    return 0


def command_verify(args: argparse.Namespace) -> int:
    from mathpe.verify import run_verification

    return 0 if run_verification(json_path=args.json, quick=args.quick, pes=args.pe) else 1


def command_bench(args: argparse.Namespace) -> int:
    from mathpe.bench import run_benchmarks

    run_benchmarks(quick=args.quick, json_path=args.json, threads=args.threads, sections=args.sections)
    return 0


def command_export(args: argparse.Namespace) -> int:
    from mathpe.export import export_model

    print(f"exported: {export_model(args.source, args.output_dir, dtype=args.dtype)}")
    return 0


def command_attention(args: argparse.Namespace) -> int:
    from mathpe.eval.attention_maps import write_attention_png

    maps = write_attention_png(
        Path(args.source), args.prompt, Path(args.output), layers=args.layers, heads=args.heads
    )
    print(f"{len(maps)} attention maps: {args.output}")
    return 0


def build_parser(compare_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``compare_defaults`` are a ``--preset``'s settings (user flags still win)."""
    parser = argparse.ArgumentParser(
        prog="mathpe", description="Positional encodings for math in transformers."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one PE and evaluate it")
    add_run_arguments(train)
    train.set_defaults(handler=command_train)

    evaluate = commands.add_parser("eval", help="evaluate a finished run folder again")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--eval_samples", type=int, default=None)
    evaluate.add_argument("--data_dir", default=None)
    evaluate.add_argument("--eval_offsets", type=int_list, default=None, help=EVAL_OFFSETS_HELP)
    evaluate.set_defaults(handler=command_eval)

    compare = commands.add_parser("compare", help="train several PEs with the same budget and compare them")
    compare.add_argument(
        "--pe",
        default="default",
        help="comma list of PEs, 'all', or 'default' (the founding eight, nope, abacus)",
    )
    compare.add_argument("--preset", default=None, help="a named recipe (see README), e.g. addition-length")
    compare.add_argument("--seeds", type=lambda text: tuple(int(s) for s in comma_list(text)), default=None)
    compare.add_argument("--jobs", type=int, default=2, help="runs in parallel, one torch thread each")
    compare.add_argument(
        "--launcher",
        default="local",
        help=f"one of: {', '.join(LAUNCHERS)}; local: --jobs worker processes; ray: a Ray task per run, on "
        'a cluster or a local Ray instance with --jobs CPUs (pip install "mathpe[ray]")',
    )
    compare.add_argument(
        "--ray_address",
        default=None,
        help="--launcher ray: the cluster's address (default $RAY_ADDRESS, else a local Ray instance)",
    )
    add_run_arguments(compare, skip=frozenset({"pe"}))
    compare.set_defaults(handler=command_compare, **(compare_defaults or {}))

    from transformers import HfArgumentParser

    from mathpe.train.pretrain import PretrainConfig

    pretrain = commands.add_parser(
        "pretrain",
        parents=[HfArgumentParser(PretrainConfig, add_help=False)],
        help="train a Pythia-style GPT-NeoX on math text from scratch (the swap study's base model)",
    )
    pretrain.add_argument("--quiet", action="store_true", help="no progress bars")
    pretrain.set_defaults(handler=command_pretrain)

    from mathpe.train.swap_study import SwapStudyConfig

    swap_study = commands.add_parser(
        "swap-study",
        parents=[HfArgumentParser(SwapStudyConfig, add_help=False)],
        help="swap the PE of a pretrained model and adapt it with LoRA: perplexity at 1x/2x/4x context",
    )
    swap_study.set_defaults(handler=command_swap_study)

    verify = commands.add_parser("verify", help="check every PE in every model, dtype and device")
    verify.add_argument("--json", default=None, help="also write the table as JSON here")
    verify.add_argument("--quick", action="store_true", help="lengths 64 and 256 only (for CI smoke tests)")
    verify.add_argument("--pe", type=comma_list, default=None, help="comma list of PEs (default: all)")
    verify.set_defaults(handler=command_verify)

    bench = commands.add_parser("bench", help="time each PE and compare with transformers / x-transformers")
    bench.add_argument("--quick", action="store_true", help="small sizes, about 2.5 minutes on 2 CPU cores")
    bench.add_argument("--json", default=None)
    bench.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: see README)")
    bench.add_argument(
        "--sections", type=comma_list, default=None, help="comma list of sections (default: all)"
    )
    bench.set_defaults(handler=command_bench)

    export = commands.add_parser(
        "export", help="write a standalone model folder (LoRA merged) from a run or one of its checkpoints"
    )
    export.add_argument("source", help="a run folder or one of its checkpoint-N folders")
    export.add_argument("output_dir", help="a new or empty folder")
    export.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        default=None,
        help="cast the weights (default: keep)",
    )
    export.set_defaults(handler=command_export)

    attention = commands.add_parser("attention", help="plot a model's attention maps over a prompt (PNG)")
    attention.add_argument("source", help="a run folder (its model/) or a saved model folder")
    attention.add_argument("--prompt", required=True, help="the text, e.g. '12+34='")
    attention.add_argument("--layers", type=int_list, default=None, help="e.g. 0,1 (default: all)")
    attention.add_argument("--heads", type=int_list, default=None, help="e.g. 0-3 (default: all)")
    attention.add_argument("--output", default="attention.png", help="the PNG to write")
    attention.set_defaults(handler=command_attention)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compare" and args.preset:
        if args.preset not in COMPARE_PRESETS:
            print(
                f"mathpe: error: unknown preset {args.preset!r}; choose from: {', '.join(COMPARE_PRESETS)}",
                file=sys.stderr,
            )
            return EXIT_USAGE
        args = build_parser(COMPARE_PRESETS[args.preset].arguments).parse_args(argv)
    from mathpe.train.trainer import TrainingDivergedError

    args.command_line = ["mathpe", *(sys.argv[1:] if argv is None else argv)]  # recorded with results
    # SIGTERM ends a run like Ctrl-C, with one line. Not for compare: its worker processes would finish their
    # runs first; there the default (the parent ends at once) stays.
    previous_handler = signal.getsignal(signal.SIGTERM)
    if args.command != "compare":
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.handler(args)
    except TrainingDivergedError as error:
        print(f"mathpe: error: {error}", file=sys.stderr)
        return 1
    except MathPEError as error:  # only mathpe's own errors: anything else is a bug and keeps its traceback
        if os.environ.get("MATHPE_DEBUG"):
            raise
        print(f"mathpe: error: {error_summary(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mathpe: interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    except Terminated:
        print("mathpe: terminated (SIGTERM); --resume continues from the last checkpoint", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


class Terminated(BaseException):
    """SIGTERM arrived (``kill``, a job scheduler's time limit). A ``BaseException`` like
    ``KeyboardInterrupt``, so no ``except Exception`` on the way (a compare worker's) mistakes it for a failed
    run."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
