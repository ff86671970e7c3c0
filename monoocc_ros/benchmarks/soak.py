"""`monoocc bench soak`: a long replay through the node, watching its memory and its drops.

The node runs as its own process; this process publishes N frames (20 distinct synthetic frames,
cycled, each with its own stamp) over DDS at a fixed rate, or in lock step (the next frame when
the previous grid arrives) with --rate 0. Pick a rate below the node's processing rate (see
`monoocc bench`): then no good frame may be dropped. Reported: the node's resident set size
after warm-up and every tenth of the run, its growth, grids received, and the node's own
dropped/errors counters from /diagnostics.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from monoocc_ros.benchmarks.backends import resident_bytes
from monoocc_ros.benchmarks.report import markdown_table
from monoocc_ros.dds import use_local_dds

WARMUP = 10  # frames before the starting RSS is read: first-call allocations are not a leak


def node_rss_mib(pid: int) -> float:
    return resident_bytes(pid) / 2**20


def main(checkpoint: str | None, frames: int, rate: float, backend: str, json_out: str | None) -> int:
    use_local_dds()
    from diagnostic_msgs.msg import DiagnosticArray
    from tqdm import tqdm

    from monoocc_ros.benchmarks.backends import _frames
    from monoocc_ros.benchmarks.node import _checkpoint
    from monoocc_ros.ros.node import diagnostic_status_name
    from monoocc_ros.testing.harness import Harness, camera_info_msg, image_msg, start_node

    ckpt, label = _checkpoint(checkpoint)
    data = _frames(20)
    ns = f"/soak{os.getpid()}"
    cache = tempfile.TemporaryDirectory()
    os.environ.setdefault("MONOOCC_CACHE", cache.name)
    h = Harness(ns, visualization=False)
    diags: list = []

    def keep_last(msg) -> None:
        # Only this soak's node: another occupancy node on the domain publishes its own status.
        mine = [s for s in msg.status if s.name == diagnostic_status_name(f"{ns}/occupancy_node")]
        if mine:
            diags[:] = mine

    h.node.create_subscription(DiagnosticArray, "/diagnostics", keep_last, 10)
    received = 0
    samples: list[tuple[int, float]] = []
    proc = start_node(Path(ckpt), ns, ["-p", f"backend:={backend}"])
    try:
        if not h.wait_for_node(proc, 120):
            raise RuntimeError("node did not start:\n" + proc.stop())
        h.spin_until(lambda: False, 1.0)
        t_start = time.monotonic()
        every = max(1, frames // 10)
        for i in tqdm(range(frames), desc=f"soak ({backend})", unit="frame"):
            rgb, calib = data[i % len(data)]
            stamp = 1_000_000_000 + i * 100_000_000
            h.send(image_msg(rgb, stamp), camera_info_msg(calib["P2"], rgb.shape[1], rgb.shape[0], stamp))
            if rate > 0:
                due = t_start + (i + 1) / rate
                h.spin_until(lambda due=due: time.monotonic() >= due, max(0.0, due - time.monotonic()) + 0.01, proc)
            elif not h.spin_until(lambda i=i, got=received: got + len(h.voxels) > i, 120, proc):
                raise RuntimeError(f"node did not answer frame {i}:\n" + proc.stop())
            received += len(h.voxels)
            h.voxels.clear()  # keep this process flat too: 4 MB per grid
            if i + 1 == WARMUP or (i + 1) % every == 0:
                samples.append((i + 1, node_rss_mib(proc.pid)))
        h.spin_until(lambda: received + len(h.voxels) >= frames, 60, proc)
        received += len(h.voxels)
        h.voxels.clear()
        h.spin_until(lambda: False, 2.5)  # one more diagnostics message after the last frame
        elapsed = time.monotonic() - t_start
        samples.append((frames, node_rss_mib(proc.pid)))
    finally:
        h.close()
        log = proc.stop()
        cache.cleanup()
    values = {kv.key: kv.value for s in diags for kv in s.values}
    start = next(r for n, r in samples if n >= WARMUP)
    end = samples[-1][1]
    pace = f"at {rate:.2f} Hz" if rate > 0 else "in lock step"
    print(f"\nsoak: {label}, backend {backend}, {frames} frames {pace}, {elapsed:.0f} s")
    print(markdown_table(["frames sent", "node RSS MiB"], [[n, r] for n, r in samples]))
    rows = [[frames, received, values.get("frames", "?"), values.get("dropped_frames", "?"),
             values.get("errors", "?"), start, end, end - start]]  # fmt: skip
    print()
    print(markdown_table(["sent", "grids received", "node frames", "node dropped", "node errors",
                          f"RSS after {WARMUP} MiB", "RSS at end MiB", "growth MiB"], rows))  # fmt: skip
    if json_out:
        import json

        figures = {"frames": frames, "received": received, "rate_hz": rate, "backend": backend,
                   "rss_samples_MiB": samples, "diagnostics": values, "rss_growth_MiB": end - start,
                   "seconds": elapsed}  # fmt: skip
        Path(json_out).write_text(json.dumps(figures, indent=2))
    if not values:
        print("no /diagnostics message from the node arrived: its drop counter is unknown")
    ok = received == frames and end - start < 50 and values.get("dropped_frames") == "0"
    if "Traceback" in log:
        print(log[-3000:])
        ok = False
    print("PASS" if ok else "FAIL", f"(goal: every frame answered, no drops, RSS growth < 50 MiB; got growth "
          f"{end - start:.1f} MiB)")  # fmt: skip
    return 0 if ok else 1
