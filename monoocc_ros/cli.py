"""The `monoocc` command-line tool. Each subcommand's work lives in its own module; this
file only parses arguments and dispatches, importing heavy modules lazily so that
`monoocc --help` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from monoocc_ros.paths import CACHE_KINDS, DEFAULT_MODEL


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and help, the function that adds its arguments to its parser,
    and the function that runs it (exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monoocc",
        description="monoocc_ros tools: datasets, training, evaluation, export, rosbag2 tools, benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        cmd.add_arguments(sub.add_parser(cmd.name, help=cmd.help))
    return parser


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="dataset root to write (ROOT/sequences/XX/...)")
    p.add_argument("--sequences", type=int, default=1, help="number of sequences (default 1)")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence (default 20)")
    p.add_argument("--seed", type=int, default=0, help="world seed; same seed, same files (default 0)")
    p.add_argument("--first-sequence", type=int, default=0, help="number of the first sequence (default 0)")
    p.add_argument(
        "--preset",
        choices=["benchmark"],
        help="benchmark: the named benchmark (training worlds 00-07,09,10 x 100 frames from seed 0, validation "
        "worlds 08,11,12 x 50 frames from seed 1, and splits.yaml); ignores --sequences/--frames/--seed",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config YAML (config/train/*.yaml)")
    p.add_argument("--resume", help="checkpoint (last.pt) to continue exactly from")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys (YAML values)")


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset root (ROOT/sequences/XX)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split (default val)")
    p.add_argument("--sequences", nargs="+", help="explicit sequences instead of the split's")
    p.add_argument("--every", type=int, default=1, help="use every N-th labelled frame (default 1)")
    p.add_argument("--json", help="also write the statistics to this JSON file")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a model (.pt): a run's last.pt or an exported one")
    p.add_argument("--data", required=True, help="dataset root (ROOT/sequences/XX)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split (default val)")
    p.add_argument("--sequences", nargs="+", help="explicit sequences instead of the split's")
    p.add_argument("--predictions", help="write sequences/XX/predictions/NNNNNN.label (raw ids) under this root")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument(
        "--controls",
        action="store_true",
        help="also score an image-free prior and the model given another sequence's images, so a scene prior "
        "is not mistaken for perception",
    )
    p.add_argument(
        "--prior-split",
        default="train",
        choices=["train", "val", "test"],
        help="split whose labels build the image-free prior (default train)",
    )


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a fine-head model (.pt)")
    p.add_argument("--data", required=True, help="dataset root; frames of its training split are used")
    p.add_argument("--sequences", nargs="+", help="explicit training sequences instead of the split's")
    p.add_argument("--frames", type=int, default=100, help="evenly spaced training frames (default 100)")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write (same weights)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument(
        "--per-class",
        action="store_true",
        help="one threshold per predicted class, maximising completion IoU + mIoU (default: one for all, "
        "maximising completion IoU)",
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (runs/NAME/last.pt) or a model")
    p.add_argument("--out", help=f"deployable checkpoint to write (no optimizer state), e.g. {DEFAULT_MODEL}")
    p.add_argument("--onnx", help="ONNX model to write (opset 20), for the onnxruntime backend")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                    help="ONNX input size (default: the config's network input size)")  # fmt: skip


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help=f"checkpoint (.pt) or ONNX export (.onnx); default {DEFAULT_MODEL}")
    p.add_argument("--image", required=True, help="RGB image (PNG/JPEG)")
    p.add_argument("--calib", help="KITTI calib.txt (P2 and Tr); default: KITTI's odometry calibration")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", required=True, help="output stem: writes OUT.label (raw ids) and OUT.png")


def _bag_args(p: argparse.ArgumentParser) -> None:
    bag_sub = p.add_subparsers(dest="bag_command", required=True, metavar="BAGCOMMAND")
    fd = bag_sub.add_parser("from-dataset", help="write a SemanticKITTI-format sequence as a rosbag2")
    fd.add_argument("--data", required=True, help="dataset root (ROOT/sequences/XX)")
    fd.add_argument("--sequence", required=True, help="sequence name, e.g. 00")
    fd.add_argument("--out", required=True, help="bag directory to create")
    fd.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    fd.add_argument("--max-frames", type=int)
    pl = bag_sub.add_parser("play", help="publish a bag over DDS with its recorded timing")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0)
    pl.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time nodes)")
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--topics", nargs="+")
    rec = bag_sub.add_parser("record", help="record topics to a bag (Ctrl-C to stop)")
    rec.add_argument("--topics", nargs="+", required=True)
    rec.add_argument("--out", required=True)
    rec.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    rec.add_argument("--duration", type=float)
    rec.add_argument("--count", type=int, help="stop after this many messages on every topic")
    brep = bag_sub.add_parser("repair", help="a readable bag from one whose recorder was killed (MCAP)")
    brep.add_argument("bag", help="the broken bag folder (left as it is)")
    brep.add_argument("--out", help="the repaired bag (default: BAG_repaired)")
    be = bag_sub.add_parser("eval", help="score predicted VoxelGrids against ground truth, matched by stamp")
    be.add_argument("--pred", required=True)
    be.add_argument("--gt", required=True)
    be.add_argument("--pred-topic", default="/occupancy_node/output/voxels")
    be.add_argument("--gt-topic", default="/ground_truth/voxels")
    be.add_argument("--max-lost", type=float, default=0.05, help="exit 1 when more than this fraction is lost")


def _replay_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bag", required=True)
    p.add_argument("--checkpoint", help=f"default: the shipped {DEFAULT_MODEL}")
    p.add_argument("--rate", type=float, help="play at the recorded timing x RATE (default: as fast as consumed)")
    p.add_argument("--out", help="also record images and predictions to this bag")
    p.add_argument("--max-lost", type=float, default=0.05, help="exit 1 when more than this fraction is lost")
    p.add_argument("--json", help="write the scores as JSON")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out")
    p.add_argument("--checkpoint", help=f"default: the shipped {DEFAULT_MODEL}")
    p.add_argument("--frames", type=int, default=20)


def _ablation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="data/benchmark", help="dataset root with splits.yaml (default data/benchmark)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--steps", type=int, default=1500, help="training steps of every student variant (default 1500)")
    p.add_argument("--teacher-steps", type=int, default=3000, help="training steps of the teacher (default 3000)")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--results", default="docs/results.md")
    p.add_argument("--no-train", action="store_true", help="only tabulate the runs that finished")
    p.add_argument(
        "--controls",
        action="store_true",
        help="with --no-train: also measure the controls missing from finished runs whose checkpoints are here "
        "(evaluation only)",
    )


def _backends_options(p: argparse.ArgumentParser, defaults: tuple) -> None:
    p.add_argument("--checkpoint", default=defaults[0], help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--frames", type=int, default=defaults[1], help="timed frames per backend (default 20)")
    p.add_argument("--e2e-frames", type=int, default=defaults[2], help="frames for the node's end-to-end rate")
    p.add_argument("--json", default=defaults[3], help="also write the figures to this JSON file")


def _backends_suppressed(p: argparse.ArgumentParser) -> None:
    # `bench backends` repeats `bench`'s options: its copies must not overwrite what was given
    # before its name, so their defaults are SUPPRESS.
    _backends_options(p, (argparse.SUPPRESS,) * 4)


def _bench_args(p: argparse.ArgumentParser) -> None:
    _backends_options(p, (None, 20, 20, None))  # `monoocc bench` alone runs `bench backends`
    what = p.add_subparsers(dest="what", metavar="WHAT")
    for cmd in BENCH:
        cmd.add_arguments(what.add_parser(cmd.name, help=cmd.help))


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clear",
        nargs="*",
        choices=list(CACHE_KINDS),
        metavar="KIND",
        help=f"delete these caches ({', '.join(CACHE_KINDS)}; all without KIND); each is rebuilt when next needed",
    )


def _bench_msg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", help="also write the figures to this JSON file")


def _bench_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", help="config names (default: all four shipped configs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--repeats", type=int, help="timed runs per config (default 20; fewer for paper-size on CPU)")
    p.add_argument("--half", action="store_true", help="fp16 autocast (CUDA only)")
    p.add_argument("--json", help="also write the figures to this JSON file")


def _bench_memory_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runs",
        nargs="+",
        metavar="CONFIG:MODE",
        help="e.g. student_small:train teacher_small:infer (default: student_tiny and student_small train and "
        "infer, teacher_small infer)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--checkpointing", default="auto", choices=["auto", "on", "off"], help="as the trainer's option (default auto)"
    )
    p.add_argument("--attention-chunk", type=int, default=65536, help="queries per sampling chunk (default 65536)")
    p.add_argument(
        "--limit-gib", type=float, default=20.0, help="stop a run whose resident memory passes this (default 20)"
    )
    p.add_argument("--json", help="also write the rows to this JSON file")


def _bench_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="data/benchmark", help="dataset root (default data/benchmark)")
    p.add_argument("--sequence", default="00", help="the sequence whose frames are trained on (default 00)")
    p.add_argument("--steps", type=int, default=20, help="steps timed per row (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="steps not timed first (default 3)")
    p.add_argument("--json", help="also write the figures to this JSON file")


def _bench_soak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help=f"default: {DEFAULT_MODEL}")
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0.0, help="Hz; 0: lock step (next frame on each grid)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--json", help="also write the figures to this JSON file")


def _bench_node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help=f"default: {DEFAULT_MODEL} (untrained student_tiny if absent)")
    p.add_argument("--frames", type=int, default=20)


# A user's mistake (a path that does not exist, a file of the wrong kind, a bad value) reaches
# here as one of these; it is printed as one line and exits 2. Anything else is a bug and keeps its
# traceback. MONOOCC_DEBUG=1 shows the traceback of user errors too.
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (`errors.one_line`); a KeyError says what it is."""
    from monoocc_ros import errors

    return f"missing entry {errors.one_line(exc)}" if isinstance(exc, KeyError) else errors.one_line(exc)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except USER_ERRORS as exc:
        if os.environ.get("MONOOCC_DEBUG"):
            raise
        name = args.command if args.command != "bag" else f"bag {args.bag_command}"
        if args.command == "bench" and getattr(args, "what", None):
            name = f"bench {args.what}"
        print(f"monoocc {name}: {one_line(exc)}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed subcommand (COMMANDS)."""
    return next(c for c in COMMANDS if c.name == args.command).run(args)


def _bench(args: argparse.Namespace) -> int:
    """`monoocc bench [WHAT]` (BENCH); without WHAT the backends report."""
    return next(c for c in BENCH if c.name == (args.what or "backends")).run(args)


def _synth(args: argparse.Namespace) -> int:
    import time

    from monoocc_ros.data import synth as S

    t0 = time.perf_counter()
    if args.preset == "benchmark":
        root = S.synthesize_benchmark(args.out)
        n = len(S.BENCHMARK_TRAIN) * S.BENCHMARK_TRAIN_FRAMES + len(S.BENCHMARK_VAL) * S.BENCHMARK_VAL_FRAMES
    else:
        root = S.synthesize(args.out, args.sequences, args.frames, args.seed, args.first_sequence)
        n = args.sequences * args.frames
    dt = time.perf_counter() - t0
    print(f"wrote {n} frames to {root} in {dt:.1f} s ({n / dt:.2f} frames/s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    import yaml

    from monoocc_ros.trainer.config import TrainConfig
    from monoocc_ros.trainer.engine import train

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    result = train(TrainConfig.from_yaml(args.config, overrides), resume=args.resume, device=args.device)
    return 0 if result["step"] > 0 else 1


def _stats(args: argparse.Namespace) -> int:
    from monoocc_ros.data.statistics import main as stats_main

    return stats_main(args)


def _eval(args: argparse.Namespace) -> int:
    from monoocc_ros.trainer.evaluate import main as eval_main

    return eval_main(args)


def _calibrate(args: argparse.Namespace) -> int:
    from monoocc_ros.trainer.calibrate import calibrate

    seqs = tuple(args.sequences) if args.sequences else None
    result = calibrate(args.checkpoint, args.data, args.out, seqs, args.frames, args.device, per_class=args.per_class)
    print(f"wrote {args.out}: {result.summary()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from monoocc_ros.checkpoint import export_weights

    if not args.out and not args.onnx:
        raise ValueError("give --out (checkpoint) and/or --onnx (ONNX model)")
    if args.out:
        data = export_weights(args.checkpoint, args.out)
        size = Path(args.out).stat().st_size / 2**20
        metrics = {k: round(v, 2) for k, v in data.get("metrics", {}).items() if isinstance(v, float)}
        name, step = data["model_config"].name, data.get("step")
        print(f"wrote {args.out} ({size:.1f} MiB): {name}, step {step}, metrics {metrics}")
    if args.onnx:
        from monoocc_ros.onnx_export import export_onnx

        size_hw = tuple(args.image_size) if args.image_size else None
        print(export_onnx(args.checkpoint, args.onnx, size_hw).describe())
    return 0


def _predict(args: argparse.Namespace) -> int:
    from monoocc_ros.predict import main as predict_main

    return predict_main(args)


def _ablation(args: argparse.Namespace) -> int:
    from monoocc_ros.trainer.ablation import run as run_ablation

    try:
        print(run_ablation(args.data, args.seeds, args.out, not args.no_train, args.results,
                           steps=args.steps, teacher_steps=args.teacher_steps,
                           controls=True if args.controls else None))  # fmt: skip
    except KeyboardInterrupt:
        print("monoocc ablation: interrupted; run it again to continue where it stopped", file=sys.stderr)
        return 130
    return 0


def _cache(args: argparse.Namespace) -> int:
    from monoocc_ros.cache import main as cache_main

    return cache_main(args.clear)


def _demo(args: argparse.Namespace) -> int:
    from monoocc_ros.demo import run_demo

    return run_demo(args.out, args.checkpoint, args.frames)


def _bag(args: argparse.Namespace) -> int:
    from monoocc_ros.bag.cli import run

    return run(args)


def _bench_backends(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import backends

    return backends.run(args.checkpoint, args.frames, args.e2e_frames, args.json)


def _bench_train(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import train as train_bench

    return train_bench.run(args.data, args.sequence, args.steps, args.warmup, args.json)


def _bench_soak(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import soak

    return soak.main(args.checkpoint, args.frames, args.rate, args.backend, args.json)


def _bench_msg(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import msg

    return msg.main(args.json)


def _bench_node(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import node

    return node.main(args.checkpoint, args.frames, args.frames)


def _bench_memory(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import memory

    runs = None
    if args.runs:
        runs = [tuple(r.split(":", 1)) if ":" in r else (r, "train") for r in args.runs]
        bad = [f"{c}:{m}" for c, m in runs if m not in ("train", "infer")]
        if bad:
            print(f"monoocc bench memory: modes must be train or infer, got {bad}", file=sys.stderr)
            return 2
    return memory.main(runs, args.device, args.checkpointing, args.attention_chunk, args.limit_gib, args.json)


def _bench_model(args: argparse.Namespace) -> int:
    from monoocc_ros.benchmarks import model

    return model.main(args.configs, args.device, args.repeats, args.half, args.json)


# The subcommands, in --help order.
COMMANDS: tuple[Command, ...] = (
    Command("synth", "write a procedural synthetic driving dataset (SemanticKITTI layout)", _synth_args, _synth),
    Command("train", "train a teacher or a (distilled) student; torchrun for several processes", _train_args, _train),
    Command("stats", "what a split's voxel ground truth holds, beside SemanticKITTI's figures", _stats_args, _stats),
    Command("eval", "SSC metrics of a checkpoint on a SemanticKITTI-format split", _eval_args, _eval),
    Command(
        "calibrate",
        "the fine head's occupancy threshold that maximises completion IoU on training frames",
        _calibrate_args,
        _calibrate,
    ),
    Command(
        "export",
        "a deployable checkpoint (--out: weights, config, metrics) and/or an ONNX model (--onnx)",
        _export_args,
        _export,
    ),
    Command("predict", "occupancy of one image: SemanticKITTI .label file and a BEV picture", _predict_args, _predict),
    Command("bag", "rosbag2 tools: from-dataset, play, record, eval", _bag_args, _bag),
    Command("replay-eval", "replay a bag through the node (own process) and score it", _replay_eval_args, _bag),
    Command("demo", "the end-to-end demo (make demo): synthetic bag -> node -> scores + pictures", _demo_args, _demo),
    Command("ablation", "train and score the ablation variants; writes docs/results.md", _ablation_args, _ablation),
    Command("cache", "disk used by the derived-file caches; --clear frees it", _cache_args, _cache),
    Command(
        "bench",
        "benchmarks; without WHAT: the torch vs onnxruntime report (latency, memory, stages, node rate)",
        _bench_args,
        _bench,
    ),
)
# `monoocc bench WHAT`.
BENCH: tuple[Command, ...] = (
    Command("backends", "the default report: torch vs onnxruntime side by side", _backends_suppressed, _bench_backends),
    Command("msg", "VoxelGrid conversion and cross-process DDS latency", _bench_msg_args, _bench_msg),
    Command("model", "parameters, forward latency and peak memory per model config", _bench_model_args, _bench_model),
    Command(
        "memory",
        "peak memory of one training step and of inference per config (batch 1; RSS or CUDA peak)",
        _bench_memory_args,
        _bench_memory,
    ),
    Command(
        "train",
        "ms per training step: teacher, undistilled student, distilled with live or cached teacher",
        _bench_train_args,
        _bench_train,
    ),
    Command("soak", "a long replay through the node: memory growth and drops", _bench_soak_args, _bench_soak),
    Command("node", "per-stage latency and end-to-end rate of the occupancy node", _bench_node_args, _bench_node),
)


if __name__ == "__main__":
    sys.exit(main())
