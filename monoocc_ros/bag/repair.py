"""`monoocc bag repair BAG`: a readable bag again from one whose recorder was killed.

A recorder killed with SIGKILL (or a power cut) leaves an MCAP file without its summary and a
bag folder without metadata.yaml: nothing reads it. `monoocc bag record` flushes a complete chunk
every second (`play.flush_to_disk`), so the file holds every message up to about a second before
the kill. This reads it record by record with the `mcap` library's stream reader (which needs no
summary), stops at the first incomplete record, and writes the messages as a new bag with their
original topics, types and timestamps. The broken bag is left as it is. Messages are held in
memory until written (the bags this package records: seconds to minutes of camera frames).
"""

from __future__ import annotations

from pathlib import Path

from mcap.exceptions import McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader

from monoocc_ros.bag.io import RELIABLE_QOS, new_bag, typestore


def repair(bag: str | Path, out: str | Path) -> dict[str, int]:
    """Messages per topic written to the new bag `out` (a folder that must not exist)."""
    bag, out = Path(bag), Path(out)
    if not bag.is_dir():
        raise FileNotFoundError(f"bag {bag} does not exist (expected a rosbag2 folder)")
    files = sorted(bag.glob("*.mcap"))
    if not files:
        raise ValueError(f"{bag} has no .mcap file to repair (only MCAP bags can be repaired)")
    if out.exists():
        raise FileExistsError(f"{out} already exists; pick another --out")
    # MCAP ids are per file (a split bag may number its topics differently in each): keyed by
    # (file, id) here, topics by name in the new bag.
    schemas: dict[tuple[int, int], Schema] = {}
    channels: dict[tuple[int, int], Channel] = {}
    messages: list[tuple[tuple[int, int], int, bytes]] = []
    for n, path in enumerate(files):
        with path.open("rb") as f:
            try:
                for record in StreamReader(f, skip_magic=False, emit_chunks=False).records:
                    if isinstance(record, Schema):
                        schemas[(n, record.id)] = record
                    elif isinstance(record, Channel):
                        channels[(n, record.id)] = record
                    elif isinstance(record, Message):
                        messages.append(((n, record.channel_id), record.log_time, bytes(record.data)))
            except (McapError, EOFError, ValueError, OSError):
                pass  # the record the kill cut short, and anything after it: lost
    return _write(out, schemas, channels, messages)


def _write(out: Path, schemas: dict, channels: dict, messages: list) -> dict[str, int]:
    store = typestore()
    counts: dict[str, int] = {}
    with new_bag(out) as writer:
        by_topic, conns = {}, {}
        for key, ch in channels.items():
            msgtype = schemas[(key[0], ch.schema_id)].name
            if msgtype not in store.fielddefs:
                raise ValueError(f"{ch.topic}: message type {msgtype} is not known to this package's type store")
            if ch.topic not in by_topic:
                by_topic[ch.topic] = writer.add_connection(
                    ch.topic, msgtype, typestore=store, offered_qos_profiles=[RELIABLE_QOS]
                )
                counts[ch.topic] = 0
            conns[key] = by_topic[ch.topic]
        for key, stamp, data in sorted(messages, key=lambda m: m[1]):
            if key in conns:
                writer.write(conns[key], stamp, data)
                counts[channels[key].topic] += 1
    return counts
