"""Print the fault table of the bad-input test (test/test_bad_inputs.py) as markdown: each case,
the command, the one line it prints and the exit code. For issue notes and docs; the test is what
asserts. Usage: .venv/bin/python scripts/fault_table.py > fault_table.md"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

import test_bad_inputs as T


class _Factory:
    """The fixture's tmp_path_factory, outside pytest."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = T.files.__wrapped__(_Factory(Path(tmp)))
        print("| case | command | the one line on stderr | exit |")
        print("|---|---|---|---|")
        for case, argv, _ in T._cases(files):
            env = {**os.environ, "MONOOCC_CACHE": str(Path(tmp) / "cache")}
            proc = subprocess.run([sys.executable, "-m", "monoocc_ros.cli", *argv], capture_output=True, text=True,
                                  timeout=300, env=env, cwd=tmp)  # fmt: skip
            line = " / ".join(T._one_line(proc.stderr)).replace(tmp, "$TMP").replace("|", "\\|")
            shown = " ".join(argv).replace(tmp, "$TMP")
            print(f"| {case} | `monoocc {shown}` | {line} | {proc.returncode} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
