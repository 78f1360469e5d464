"""Built-in team templates: YAML data files in `team_templates/`, one template per file.

A file holds the fields of `chorus.v1.TeamTemplate` (`name`, `title`, `description`,
`input_hint`, `example_input`) and the team under `team` (a `chorus.v1.TeamSpec` in proto
JSON field names; enum values by name, e.g. `TEAM_KIND_ROUND_ROBIN`). Templates are loaded
and validated once at start; a broken file stops the process with a clear message.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from chorus.core.settings import ConfigurationError
from chorus.v1 import team_pb2

_FIELDS = ("name", "title", "description", "input_hint", "example_input")


def _parse(source: str, data: Any) -> team_pb2.TeamTemplate:
    if not isinstance(data, dict):
        raise ConfigurationError(f"team template {source}: expected a mapping")
    unknown = set(data) - {*_FIELDS, "team"}
    if unknown:
        raise ConfigurationError(f"team template {source}: unknown keys {sorted(unknown)}")
    template = team_pb2.TeamTemplate()
    for key in _FIELDS:
        setattr(template, key, str(data.get(key, "")))
    if not template.name:
        raise ConfigurationError(f"team template {source}: `name` is required")
    try:
        json_format.ParseDict(data.get("team") or {}, template.spec)
    except json_format.ParseError as exc:
        raise ConfigurationError(f"team template {source}: {exc}") from None
    return template


def load_templates(paths: Iterable[Path] | None = None) -> dict[str, team_pb2.TeamTemplate]:
    """Templates by name, from `paths` (default: the package's `team_templates/*.yaml`).

    Raises:
        ConfigurationError: unreadable YAML, unknown keys, a bad team, or a duplicate name.
    """
    if paths is None:
        root = importlib.resources.files("chorus.orchestrator") / "team_templates"
        sources: list[tuple[str, str]] = sorted(
            (entry.name, entry.read_text(encoding="utf-8"))
            for entry in root.iterdir()
            if entry.name.endswith((".yaml", ".yml"))
        )
    else:
        sources = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(paths)]
    templates: dict[str, team_pb2.TeamTemplate] = {}
    for name, text in sources:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"team template {name}: {exc}") from None
        template = _parse(name, data)
        if template.name in templates:
            raise ConfigurationError(f"team template {name}: duplicate name {template.name!r}")
        templates[template.name] = template
    return templates
