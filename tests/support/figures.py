"""Figures a test module measures: printed as they come (``pytest -s``) and, at the end of the
module, merged into ``test-artifacts/<module name without test_>.json`` with the command that
made them (figures of tests not run this time stay as they were)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from support.paths import REPO


class Figures:
    """One test module's figures. In the module::

        FIGURES = Figures("faults", __file__)
        record = FIGURES.record
        _write_figures = FIGURES.fixture()   # module-scoped, autouse: writes them at the end
    """

    def __init__(self, label: str, test_file: str) -> None:
        path = Path(test_file)
        self.label = label
        self.artifact = REPO / "test-artifacts" / f"{path.stem.removeprefix('test_')}.json"
        self.command = f".venv/bin/python -m pytest -s -q tests/{path.name}"
        self.values: dict[str, Any] = {}

    def record(self, key: str, value: Any) -> None:
        """Keep one figure and print it."""
        self.values[key] = value
        print(f"\n[{self.label}] {key}: {json.dumps(value, default=str)}")

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def write(self) -> None:
        """Merge this run's figures into the artifact file (nothing when none were recorded)."""
        if not self.values:
            return
        self.artifact.parent.mkdir(parents=True, exist_ok=True)
        old: dict[str, Any] = {}
        if self.artifact.exists():
            try:
                old = json.loads(self.artifact.read_text())
            except ValueError:
                old = {}
        old.update(self.values)
        old["_command"] = self.command
        old["_written"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.artifact.write_text(json.dumps(old, indent=2, sort_keys=True, default=str))

    def fixture(self) -> Callable:
        """A module-scoped autouse fixture that writes the figures when the module's tests end."""

        @pytest.fixture(scope="module", autouse=True)
        def _write_figures():
            yield
            self.write()

        return _write_figures
