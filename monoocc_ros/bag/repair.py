"""`monoocc bag repair BAG`: a readable bag again from one whose recorder was killed.

A recorder killed with SIGKILL (or a power cut) leaves an MCAP file without its summary and a
bag folder without metadata.yaml: nothing reads it. `monoocc bag record` flushes a complete chunk
every second (`play.flush_to_disk`), so the file holds every message up to about a second before
the kill. This reads it record by record with the `mcap` library's stream reader (which needs no
summary), stops at the first incomplete record, and writes the messages as a new bag with their
original topics, types and timestamps. The broken bag is left as it is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mcap.exceptions import McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader

from monoocc_ros.bag.io import RELIABLE_QOS, open_writer, typestore


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
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    messages: list[tuple[int, int, bytes]] = []
    for path in files:
        with path.open("rb") as f:
            try:
                for record in StreamReader(f, skip_magic=False, emit_chunks=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
                    elif isinstance(record, Message):
                        messages.append((record.channel_id, record.log_time, bytes(record.data)))
            except (McapError, EOFError, ValueError, OSError):
                pass  # the record the kill cut short, and anything after it: lost
    return _write(out, schemas, channels, messages)


def _write(out: Path, schemas: dict, channels: dict, messages: list[tuple[int, int, bytes]]) -> dict[str, int]:
    store = typestore()
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    counts: dict[str, int] = {}
    try:
        with open_writer(partial) as writer:
            conns = {}
            for cid, ch in channels.items():
                msgtype = schemas[ch.schema_id].name
                if msgtype not in store.fielddefs:
                    raise ValueError(f"{ch.topic}: message type {msgtype} is not known to this package's type store")
                conns[cid] = writer.add_connection(
                    ch.topic, msgtype, typestore=store, offered_qos_profiles=[RELIABLE_QOS]
                )
                counts[ch.topic] = 0
            for cid, stamp, data in sorted(messages, key=lambda m: m[1]):
                if cid in conns:
                    writer.write(conns[cid], stamp, data)
                    counts[channels[cid].topic] += 1
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return counts
