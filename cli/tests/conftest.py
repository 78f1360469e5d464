"""The CLI suite's shared helpers live in `cli_helpers.py` (the `chorus` command as a process)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cli_helpers (pytest uses importlib mode)
