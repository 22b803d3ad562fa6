"""The repository's two configurations as fixtures, and the check that a configuration is refused."""

from __future__ import annotations

import copy

import pytest
import yaml

from spatialreasoner.config import validate_config
from spatialreasoner.errors import ConfigError


@pytest.fixture(scope="module")
def paper_config(repo_root):
    return yaml.safe_load((repo_root / "config" / "config.yaml").read_text())


@pytest.fixture(scope="module")
def demo_config(repo_root):
    return yaml.safe_load((repo_root / "config" / "demo.yaml").read_text())


def rejected(config, *fragments):
    """Validate ``config`` (a copy), expect a ConfigError and that its message holds every fragment; return it."""
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(config))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
