"""Dispatch of `monoocc bag ...` and `monoocc replay-eval`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from monoocc_ros.dds import use_local_dds


def run(args: argparse.Namespace) -> int:
    if args.command == "replay-eval":
        use_local_dds()
        from monoocc_ros.bag.replay import replay_eval

        result = replay_eval(args.bag, args.checkpoint, args.rate, out=args.out)
        print(result.report())
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {**result.scores.to_dict(), "frames_lost": result.frames_lost, "latency_ms": result.latency_ms},
                    indent=2,
                )
            )
        failure = result.check_lost(args.max_lost)
        if failure:
            print(failure, file=sys.stderr)
            return 1
        return 0
    cmd = args.bag_command
    if cmd == "from-dataset":
        from monoocc_ros.bag.dataset import from_dataset

        counts = from_dataset(args.data, args.sequence, args.out, args.storage, max_frames=args.max_frames)
        print(f"wrote {args.out}: {counts['images']} images, {counts['ground_truth']} ground-truth grids")
        return 0
    if cmd == "repair":
        from monoocc_ros.bag.repair import repair

        out = args.out or f"{str(args.bag).rstrip('/')}_repaired"
        counts = repair(args.bag, out)
        print(f"wrote {out}: " + (", ".join(f"{t}: {c}" for t, c in counts.items()) or "no messages survived"))
        return 0
    if cmd == "eval":
        from monoocc_ros.bag.evaluate import score_bags

        result = score_bags(args.pred, args.gt, args.pred_topic, args.gt_topic)
        print(result.report())
        failure = result.check_lost(args.max_lost)
        if failure:
            print(failure, file=sys.stderr)
            return 1
        return 0
    use_local_dds()
    if cmd == "play":
        import rclpy

        from monoocc_ros.bag.play import Player

        rclpy.init()
        node = rclpy.create_node("monoocc_bag_player")
        try:
            n = Player(node, args.bag, args.topics, clock=args.clock).play(
                args.rate, args.loop, spin=lambda t: rclpy.spin_once(node, timeout_sec=t)
            )
        except KeyboardInterrupt:
            n = -1
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
        print(f"published {n} messages" if n >= 0 else "stopped")
        return 0
    if cmd == "record":
        from monoocc_ros.bag.play import record

        counts = record(args.topics, args.out, args.storage, args.duration, args.count)
        print(f"wrote {args.out}: " + ", ".join(f"{t}: {c}" for t, c in counts.items()))
        return 0
    raise AssertionError(cmd)
