"""`monoocc bag play` and `monoocc bag record`: bags to and from DDS with rclpy.

Playback publishes the recorded CDR bytes as they are (rclpy publishes serialized messages), with
each topic's recorded QoS, at the recorded timing scaled by `rate`, optionally `/clock` (so
`use_sim_time` nodes follow the bag) and in a loop. Recording subscribes raw and writes the bytes
with their receive time; any type rclpy can import works, our VoxelGrid included.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from rosbags.interfaces import QosDurability, QosReliability
from tqdm import tqdm

from monoocc_ros.bag.io import RELIABLE_QOS, VOXELGRID_TYPE, open_reader, open_writer, python_msg_class, typestore
from monoocc_ros.ros.stamps import set_stamp


def read_bag(path: str | Path, topics: list[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, bag timestamp ns, CDR bytes) in time order."""
    with open_reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        if not conns:
            return  # rosbags reads every connection when given none
        for conn, ts, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, ts, bytes(raw)


def bag_topics(path: str | Path) -> dict[str, tuple[str, object]]:
    """topic -> (msgtype, first offered QoS or None)."""
    with open_reader(path) as reader:
        out = {}
        for c in reader.connections:
            profiles = getattr(c.ext, "offered_qos_profiles", None)  # rosbag2 connections only
            qos = profiles[0] if profiles else None
            out[c.topic] = (c.msgtype, qos)
        return out


def rclpy_qos(qos) -> object:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    if qos is None:
        qos = RELIABLE_QOS
    return QoSProfile(
        depth=max(1, qos.depth),
        reliability=ReliabilityPolicy.BEST_EFFORT if qos.reliability == QosReliability.BEST_EFFORT
        else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.durability == QosDurability.TRANSIENT_LOCAL
        else DurabilityPolicy.VOLATILE,
    )  # fmt: skip


class Player:
    """Publishes a bag's messages from an rclpy node (one publisher per topic, recorded QoS)."""

    def __init__(self, node, bag: str | Path, topics: list[str] | None = None, clock: bool = False) -> None:
        from rosgraph_msgs.msg import Clock

        self.node, self.bag, self.clock = node, Path(bag), clock
        info = bag_topics(bag)
        wanted = topics or list(info)
        missing = [t for t in wanted if t not in info]
        if missing:
            raise ValueError(f"topics {missing} are not in {bag} (it has {sorted(info)})")
        self.pubs = {t: node.create_publisher(python_msg_class(info[t][0]), t, rclpy_qos(info[t][1])) for t in wanted}
        self.clock_pub = node.create_publisher(Clock, "/clock", 10) if clock else None
        self.topics = wanted

    def publish_clock(self, stamp_ns: int) -> None:
        if self.clock_pub is not None:
            from rosgraph_msgs.msg import Clock

            msg = Clock()
            set_stamp(msg.clock, stamp_ns)
            self.clock_pub.publish(msg)

    def publish(self, topic: str, stamp_ns: int, raw: bytes) -> None:
        self.publish_clock(stamp_ns)
        self.pubs[topic].publish(raw)

    def play(self, rate: float = 1.0, loop: bool = False, spin=None) -> int:
        """Publish with the recorded timing; `spin(timeout)` keeps the caller's executor turning."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        count = 0
        while True:
            start_wall, start_bag = None, None
            for topic, _, ts, raw in tqdm(read_bag(self.bag, self.topics), desc="play", unit="msg"):
                if start_wall is None:
                    start_wall, start_bag = time.monotonic(), ts
                due = start_wall + (ts - start_bag) / 1e9 / rate
                while (wait := due - time.monotonic()) > 0:
                    if spin is not None:
                        spin(min(wait, 0.05))
                    else:
                        time.sleep(min(wait, 0.05))
                self.publish(topic, ts, raw)
                count += 1
            if not loop:
                return count


def _matching_qos(node, topic: str):
    """Reliable when every publisher is reliable, else best effort (a reliable subscription
    would receive nothing from a best-effort camera), as `ros2 bag record` adapts."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    infos = node.get_publishers_info_by_topic(topic)
    reliable = bool(infos) and all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


FLUSH_EVERY_S = 1.0  # a killed recorder loses at most this much (`monoocc bag repair`)


def flush_to_disk(writer) -> None:
    """Close the MCAP writer's pending chunk and flush the file, so that what was recorded so far
    survives a SIGKILL or a power cut (rosbags only writes a chunk once it holds 1 MiB, and the
    index and metadata.yaml only on close; `monoocc bag repair` rebuilds those). Reaches into
    rosbags' MCAP writer (attributes `storage.chunk`, `close_chunk`, `bio`); other storages and
    other rosbags versions are left alone."""
    storage = getattr(writer, "storage", None)
    chunk = getattr(storage, "chunk", None)
    if storage is None or chunk is None or not hasattr(storage, "close_chunk") or not hasattr(storage, "bio"):
        return
    if any(chunk.msgs.values()):  # a chunk without messages would have no valid time range
        storage.close_chunk()
    storage.bio.flush()
    os.fsync(storage.bio.fileno())


def record(
    topics: list[str],
    out: str | Path,
    storage: str = "mcap",
    duration: float | None = None,
    count: int | None = None,
    discovery_timeout: float = 10.0,
) -> dict[str, int]:
    """Record `topics` until `duration` s, `count` messages per topic, or Ctrl-C."""
    import rclpy

    rclpy.init()
    node = rclpy.create_node("monoocc_bag_recorder")
    store = typestore()
    counts = {t: 0 for t in topics}
    stop = {"flag": False}
    previous = signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    try:
        deadline = time.monotonic() + discovery_timeout
        types: dict[str, str] = {}
        while len(types) < len(topics) and time.monotonic() < deadline:
            types = {n: ts[0] for n, ts in node.get_topic_names_and_types() if n in topics and ts}
            rclpy.spin_once(node, timeout_sec=0.1)
        missing = [t for t in topics if t not in types]
        if missing:
            raise RuntimeError(f"no publisher found for {missing} within {discovery_timeout} s")
        with open_writer(out, storage) as writer:
            conns = {}
            for t, msgtype in types.items():
                kw = {"typestore": store} if msgtype in store.fielddefs or msgtype == VOXELGRID_TYPE else {}
                conns[t] = writer.add_connection(t, msgtype, offered_qos_profiles=[RELIABLE_QOS], **kw)

            def make_cb(topic):
                def cb(raw: bytes) -> None:
                    writer.write(conns[topic], time.time_ns(), raw)
                    counts[topic] += 1

                return cb

            for t, msgtype in types.items():
                node.create_subscription(python_msg_class(msgtype), t, make_cb(t), _matching_qos(node, t), raw=True)
            end = time.monotonic() + duration if duration else None
            flushed = time.monotonic()
            while not stop["flag"]:
                rclpy.spin_once(node, timeout_sec=0.1)
                if time.monotonic() - flushed >= FLUSH_EVERY_S:
                    flush_to_disk(writer)
                    flushed = time.monotonic()
                if end is not None and time.monotonic() >= end:
                    break
                if count is not None and all(c >= count for c in counts.values()):
                    break
    finally:
        signal.signal(signal.SIGINT, previous)
        node.destroy_node()
        rclpy.try_shutdown()
    return counts
