"""The occupancy node as a child process: the one launcher `replay-eval`, the node benchmarks and
the node tests share (without `ros2 launch`, which the PyPI ROS wheels do not ship).

Why one: a node left running after an error keeps publishing into the next run's topics. Each
node starts in its own session, so stopping signals its whole process group (SIGINT as
`ros2 launch` does, SIGKILL after `timeout`), and on Linux it gets SIGTERM when its parent dies
(a caller killed outright never reaches its `stop()`). Its log goes to a
temporary file, not a pipe: nobody reads a pipe while frames flow, and a node blocked writing
to a full one stops answering.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import IO

from monoocc_ros.paths import package_file


@dataclass
class NodeProcess:
    """A running node: the process and its log file."""

    proc: subprocess.Popen
    log_file: IO[str] = field(repr=False)
    _final_log: str | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def log(self) -> str:
        """Everything the node printed so far."""
        if self._final_log is not None:
            return self._final_log
        self.log_file.seek(0)
        return self.log_file.read()

    def stop(self, timeout: float = 20.0) -> str:
        """SIGINT to the node's process group, SIGKILL after `timeout` s; the whole log. Safe to
        call again (it returns the same log)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self._final_log is None:
            self._final_log = self.log()
            self.log_file.close()
        return self._final_log


def _load_prctl():
    """libc's prctl, resolved here in the parent: the child between fork and exec must not import
    or dlopen anything (other threads may hold those locks). None where there is no prctl."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the process that started it dies, so a
    caller killed outright (SIGKILL, a CI timeout) leaves no node behind either."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start_node(ros_args: list[str], params_file: str | None = None) -> NodeProcess:
    """`python -m monoocc_ros.ros.main --ros-args --params-file config/occ.yaml <ros_args>` (remaps
    `-r a:=b`, parameters `-p k:=v`), in its own session, logging to a temporary file."""
    cmd = [sys.executable, "-m", "monoocc_ros.ros.main", "--ros-args",
           "--params-file", params_file or str(package_file("config/occ.yaml")), *ros_args]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # O_APPEND (shared with the child): reading the log never moves where the node writes.
    log = tempfile.TemporaryFile("a+")
    try:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
    except BaseException:
        log.close()
        raise
    return NodeProcess(proc, log)
