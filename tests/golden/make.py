"""Regenerate tests/golden/*.jsonl from tests/golden/cases.yaml (see that file). ``python -m tests.golden.make``."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from tests.golden.cases import CASES, GOLDEN, machine, run_case


def main(names: list[str]) -> None:
    for name in names or list(CASES):
        with tempfile.TemporaryDirectory() as tmp:
            for rel, path in run_case(name, Path(tmp)).items():
                shutil.copyfile(path, GOLDEN / f"{name}{rel}.jsonl")
                print("wrote", GOLDEN / f"{name}{rel}.jsonl")
    (GOLDEN / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
