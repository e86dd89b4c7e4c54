"""Run every benchmark in bench/ and print its figures (``make bench``; ``make bench ARGS=proxy_latency``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run_all", "__init__") and not p.stem.startswith("_"))
    failed = []
    for name in names:
        print(f"\n## {name}\n", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
