"""The committed generated code matches `make proto`'s output."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path):
    subprocess.run(
        [str(REPO / "scripts/generate_proto.sh")],
        check=True,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable},
    )
    fresh = tmp_path / "chorus/v1"
    committed = REPO / "core/src/chorus/v1"
    generated = sorted(p.name for p in fresh.iterdir())
    assert generated, "generator produced nothing"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, generated, shallow=False)
    assert mismatch == [] and errors == [], (
        f"stale generated code: {mismatch + errors}; run make proto"
    )
