"""A configuration file laid out like a mounted Kubernetes ConfigMap, updated the way kubelet does it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


class ConfigMapDir:
    """``gateway.yaml -> ..data/gateway.yaml`` and ``..data -> ..vN``; ``write`` swaps ``..data`` atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "gateway.yaml"
        self.version = 0
        root.mkdir(parents=True)

    def write(self, data: dict[str, Any] | str) -> str:
        """Publish a new version of the file; returns its text."""
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        self.version += 1
        version = self.root / f"..v{self.version}"
        version.mkdir()
        (version / "gateway.yaml").write_text(text)
        staged = self.root / "..data_tmp"
        os.symlink(version.name, staged)
        os.replace(staged, self.root / "..data")
        if not self.path.is_symlink():
            os.symlink("..data/gateway.yaml", self.path)
        return text
