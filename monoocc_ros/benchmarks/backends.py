"""`monoocc bench` (also `monoocc bench backends`): eager torch vs ONNX Runtime in one report.

Both backends run in this one process on the same frames (synthetic frames of a world seed not
used for training), interleaved frame by frame and alternating which backend goes first, so that
neither gets a quieter machine. Reported per backend:

- network latency (median, p90) of `Predictor.infer`, and the torch/onnxruntime ratio;
- memory: the resident set size each backend adds when loaded and warmed up, and the peak
  extra during a forward pass (RSS sampled every millisecond by a thread, minus the RSS before
  the call, over the first frames in runs that are not timed; ONNX Runtime keeps its arena
  between runs, so its per-frame peak is small);
  `torch.cuda.max_memory_allocated` for torch on CUDA;
- per stage (backbone, depth, query proposal, cross-attention, self-attention, ICCA, rest of the
  transformer, head): torch by forward hooks (wall time), ONNX Runtime by its own profiler
  (kernel time of the nodes under each module's name scope; fused nodes that lost their scope
  are listed as "fused, unscoped");
- parity on those frames (labels equal, confidence within 1e-3, largest difference);
- the node's end-to-end rate over DDS with each backend (the node as its own process, the next
  frame sent when the previous grid arrives).

On a machine with CUDA, torch runs on CUDA in fp32 and fp16 as well, and ONNX Runtime on its
CUDA provider when installed. Writes a markdown report to stdout and, with --json, the figures.
"""

from __future__ import annotations

import bisect
import gc
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monoocc_ros.benchmarks.report import markdown_table

if TYPE_CHECKING:
    from monoocc_ros.inference import Grid

MEMORY_FRAMES = 5  # frames whose peak memory is measured, in runs of their own
STAGES = ("backbone", "depth", "proposal", "cross", "self_attn", "icca", "head")
STAGE_NAMES = {
    "backbone": "backbone + FPN",
    "depth": "depth head",
    "proposal": "query proposal (lift, voxelise, U-Net)",
    "cross": "cross-attention (proposed voxels)",
    "self_attn": "self-attention (3D)",
    "icca": "ICCA",
    "transformer": "transformer, rest (reference points, gather/scatter)",
    "head": "occupancy head",
    "other": "fused, unscoped (ONNX Runtime)",
}


def resident_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (this one by default)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident set size while the context is open, sampled every `period` s."""

    def __init__(self, period: float = 0.001) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.period)

    def __enter__(self) -> PeakRSS:
        self.before = resident_bytes()
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.before) / 2**20


def _frames(n: int) -> list[tuple[np.ndarray, dict]]:
    from PIL import Image

    from monoocc_ros.data.formats import read_calib
    from monoocc_ros.data.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        seq = synthesize(tmp, 1, n, seed=2024) / "sequences" / "00"
        calib = read_calib(seq / "calib.txt")
        return [(np.asarray(Image.open(p).convert("RGB")), calib) for p in sorted((seq / "image_2").glob("*.png"))]


def _torch_stage_times(predictor, prepared, runs: int) -> dict[str, float]:
    """Median wall time per stage (ms) from forward hooks."""
    import torch

    model = predictor.backend.model
    modules = {
        "backbone": [model.backbone],
        "depth": [model.depth],
        "proposal": [model.proposal],
        "cross": list(model.transformer.cross),
        "self_attn": list(model.transformer.self_attn),
        "icca": list(model.transformer.icca),
        "head": [model.head],
        "transformer": [model.transformer],
    }
    cuda = predictor.device.type == "cuda"
    samples: dict[str, list[float]] = defaultdict(list)
    current: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    handles = []
    for stage, mods in modules.items():
        for m in mods:

            def pre(mod, _args):
                if cuda:
                    torch.cuda.synchronize()
                starts[id(mod)] = time.perf_counter()

            def post(mod, _args, _out, stage=stage):
                if cuda:
                    torch.cuda.synchronize()
                current[stage] += (time.perf_counter() - starts[id(mod)]) * 1e3

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        for _ in range(runs):
            current.clear()
            predictor.infer(prepared)
            inner = sum(current[s] for s in ("cross", "self_attn", "icca"))
            current["transformer"] -= inner
            for stage in (*STAGES, "transformer"):
                samples[stage].append(current[stage])
    finally:
        for h in handles:
            h.remove()
    return {s: statistics.median(v) for s, v in samples.items()}


def _ort_stage_times(onnx_path: Path, providers: list, prepared, runs: int) -> dict[str, float]:
    """Median kernel time per stage (ms per frame) from ONNX Runtime's profiler; node events are
    assigned to the run whose `model_run` interval holds them, and the warm-up run is dropped."""
    from monoocc_ros.inference import onnxruntime_session

    with tempfile.TemporaryDirectory() as tmp:
        session = onnxruntime_session(onnx_path, providers, profile_prefix=str(Path(tmp) / "ort_profile"))
        feed = {"image": prepared.image[None], "projection": prepared.projection[None]}
        for _ in range(runs + 1):  # the first is the warm-up
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in starts]
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, e["ts"]) - 1
        per_run[run][_scope(e["name"])] += e["dur"] / 1e3
    timed = per_run[1:]
    return {k: statistics.median(r.get(k, 0.0) for r in timed) for k in set().union(*timed)}


def _scope(node_name: str) -> str:
    parts = node_name.split("/")
    if len(parts) < 3:
        return "other"
    top = parts[1]
    if top == "transformer":
        sub = parts[2].split(".")[0] if len(parts) > 3 else ""
        return sub if sub in ("cross", "self_attn", "icca") else "transformer"
    return top if top in STAGES else "other"


def _parity(a, b) -> tuple[float, float, float]:
    """(labels, confidence) of two backends -> (labels equal, confidence within 1e-3, largest
    confidence difference)."""
    d = (a[1] - b[1]).abs()
    return float((a[0] == b[0]).float().mean()), float((d <= 1e-3).float().mean()), float(d.max())


def run(checkpoint: str | None, frames: int, e2e_frames: int, json_out: str | None) -> int:
    from monoocc_ros.benchmarks.node import _checkpoint
    from monoocc_ros.dds import use_local_dds

    use_local_dds()
    ckpt, label = _checkpoint(checkpoint)
    print(f"benchmark: {label}; {frames} synthetic frames; {os.cpu_count()} CPU cores", flush=True)
    data = _frames(frames)
    with tempfile.TemporaryDirectory() as tmp:
        return _run(Path(tmp) / "model.onnx", ckpt, label, data, frames, e2e_frames, json_out)


def _run(
    onnx_path: Path, ckpt: Path, label: str, data: list, frames: int, e2e_frames: int, json_out: str | None
) -> int:
    """The report: load, time, profile, check parity, measure the node; print; write JSON."""
    from monoocc_ros.onnx_export import export_onnx

    report = export_onnx(ckpt, onnx_path)
    print(f"exported to ONNX in {report.seconds:.1f} s", flush=True)
    bench = _Backends(_loaders(ckpt, onnx_path))
    bench.load(data)
    bench.measure()
    stages = bench.stage_times(onnx_path, max(3, min(10, frames // 2)))
    print("measuring the node's end-to-end rate per backend...", flush=True)
    e2e = _node_rates(ckpt, onnx_path, data[0][0], e2e_frames)
    summary = bench.print_report(label, report.image_size, stages, e2e, e2e_frames)
    if json_out:
        Path(json_out).write_text(json.dumps({"checkpoint": label, "cpu_cores": os.cpu_count(),
                                              "input_hw": list(report.image_size), **summary}, indent=2))  # fmt: skip
    return 0


def _loaders(ckpt: Path, onnx_path: Path) -> dict:
    """Backend name -> a function loading it: the CPU pair always, CUDA ones where present."""
    import torch

    from monoocc_ros.inference import Predictor

    loaders = {
        "torch cpu": lambda: Predictor.load(ckpt, "torch", "cpu"),
        "onnxruntime cpu": lambda: Predictor.from_onnx(onnx_path, "cpu"),
    }
    if torch.cuda.is_available():
        loaders["torch cuda"] = lambda: Predictor.load(ckpt, "torch", "cuda")
        loaders["torch cuda fp16"] = lambda: Predictor.load(ckpt, "torch", "cuda", half_precision=True)
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            loaders["onnxruntime cuda"] = lambda: Predictor.from_onnx(onnx_path, "cuda")
    return loaders


def _node_rates(ckpt: Path, onnx_path: Path, rgb, e2e_frames: int) -> dict[str, float]:
    from monoocc_ros.benchmarks.node import _end_to_end

    return {
        backend: _end_to_end(Path(model), rgb, e2e_frames, ["-p", f"backend:={backend}"])
        for backend, model in (("torch", ckpt), ("onnxruntime", onnx_path))
    }


class _Backends:
    """The backends side by side on the same prepared frames."""

    def __init__(self, loaders: dict) -> None:
        self.loaders, self.names = loaders, list(loaders)
        self.backends: dict = {}
        self.prepared: list = []
        self.resident: dict[str, float] = {}
        self.times: dict[str, list[float]] = defaultdict(list)
        self.mems: dict[str, list[float]] = defaultdict(list)
        self.parity: list[tuple[float, float, float]] = []

    def timed(self, name: str, prep) -> tuple[float, Grid]:
        import torch

        cuda = "cuda" in name
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = self.backends[name].infer(prep)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3, out

    def peak_memory(self, name: str, prep) -> float:
        """Peak extra memory of one forward pass (MiB), in its own run: the RSS sampler is a
        thread waking every millisecond, and timing under it would time the sampler too."""
        import torch

        pred = self.backends[name]
        if "cuda" in name and name.startswith("torch"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            pred.infer(prep)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        with PeakRSS() as rss:
            pred.infer(prep)
        return rss.extra_mib

    def load(self, data: list) -> None:
        """Load and warm up one backend at a time (first-call allocations, ORT's arena, cuDNN
        autotuning), so that the resident memory each one adds can be told apart."""
        for name in self.names:
            gc.collect()  # the export's model is garbage by now; torch's figure can still be ~0 or below
            before = resident_bytes()
            self.backends[name] = self.loaders[name]()
            if not self.prepared:
                self.prepared = [self.backends[name].prepare(rgb, c["P2"], c["Tr"]) for rgb, c in data]
            for prep in self.prepared[:2]:
                self.timed(name, prep)
            self.resident[name] = (resident_bytes() - before) / 2**20

    def measure(self) -> None:
        from tqdm import tqdm

        for i, prep in enumerate(tqdm(self.prepared, desc="frames", unit="frame")):
            outs = {}
            for name in self.names if i % 2 == 0 else self.names[::-1]:
                dt, out = self.timed(name, prep)
                self.times[name].append(dt)
                outs[name] = (out[0].cpu(), out[1].float().cpu())
            self.parity.append(_parity(outs["torch cpu"], outs["onnxruntime cpu"]))
        for prep in self.prepared[:MEMORY_FRAMES]:
            for name in self.names:
                self.mems[name].append(self.peak_memory(name, prep))

    def stage_times(self, onnx_path: Path, runs: int) -> dict:
        return {
            name: _torch_stage_times(pred, self.prepared[0], runs)
            if pred.backend.name == "torch"
            else _ort_stage_times(onnx_path, pred.backend.providers, self.prepared[0], runs)
            for name, pred in self.backends.items()
        }

    def print_report(self, label: str, image_size, stages: dict, e2e: dict, e2e_frames: int) -> dict:
        """Print the markdown report; returns the figures for the JSON file."""
        names, times = self.names, self.times
        base = statistics.median(times["torch cpu"])
        rows = []
        for name in names:
            med = statistics.median(times[name])
            rows.append([name, len(times[name]), med, float(np.percentile(times[name], 90)), 1000.0 / med,
                         base / med, self.resident[name], max(self.mems[name])])  # fmt: skip
        print(f"\n## Network latency, {label}, input {image_size[1]}x{image_size[0]}\n")
        print(markdown_table(["backend", "frames", "median ms", "p90 ms", "frames/s", "speed-up vs torch cpu",
                              "RSS added by load + warm-up MiB", "peak extra per frame MiB"], rows))  # fmt: skip
        print("\n## Per stage (median ms per frame; torch: wall time by hooks, onnxruntime: kernel time)\n")
        keys = [*STAGES[:6], "transformer", "head", "other"]
        srows = [[STAGE_NAMES[k], *[stages[n].get(k, 0.0) for n in names]] for k in keys]
        srows.append(["sum", *[sum(stages[n].values()) for n in names]])
        print(markdown_table(["stage", *names], srows))
        parity = self.parity
        labels_equal = float(np.mean([p[0] for p in parity]))
        confidence_close = float(np.mean([p[1] for p in parity]))
        worst = float(max(p[2] for p in parity))
        print(f"\n## Parity (onnxruntime cpu vs torch cpu, {len(parity)} frames)\n")
        print(markdown_table(["labels equal", "confidence within 1e-3", "largest confidence difference",
                              "frames with every confidence within 1e-3"],
                             [[f"{100 * labels_equal:.3f} %", f"{100 * confidence_close:.3f} %", f"{worst:.2e}",
                               f"{sum(p[2] <= 1e-3 for p in parity)}/{len(parity)}"]]))  # fmt: skip
        print(f"\n## Node end to end over DDS ({e2e_frames} frames, CPU)\n")
        print(markdown_table(["backend", "frames/s"], [[k, v] for k, v in e2e.items()]))
        ratio = base / statistics.median(times["onnxruntime cpu"])
        print(f"\nonnxruntime cpu is {ratio:.2f}x the speed of eager torch cpu (goal: 1.5x)")
        latency = {
            n: {"median_ms": statistics.median(times[n]), "p90_ms": float(np.percentile(times[n], 90)),
                "peak_extra_MiB": max(self.mems[n]), "resident_MiB": self.resident[n], "samples_ms": times[n]}
            for n in names
        }  # fmt: skip
        return {
            "latency": latency,
            "stages_ms": stages,
            "parity": {"labels_equal": labels_equal, "confidence_within_1e-3": confidence_close, "max_abs": worst},
            "node_end_to_end_hz": e2e,
            "onnxruntime_speedup_cpu": ratio,
            "process_max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
