"""The `monoocc` command-line tool. Each subcommand's work lives in its own module; this
file only parses arguments and dispatches, importing heavy modules lazily so that
`monoocc --help` is instant."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monoocc",
        description="monoocc_ros tools: datasets, benchmarks (more subcommands arrive with the trainer and bag tools).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a benchmark and print a table")
    bench_sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    bmsg = bench_sub.add_parser("msg", help="VoxelGrid conversion and cross-process DDS latency")
    bmsg.add_argument("--json", help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "bench" and args.what == "msg":
        from monoocc_ros.benchmarks import msg

        return msg.main(args.json)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
