"""The YAML configs under config/ mirror the built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ws_mppi.config import DEFAULTS, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("env", sorted(DEFAULTS))
def test_yaml_equals_builtin_default(env):
    assert load_config(CONFIG_DIR / f"mppi_{env}.yaml").to_dict() == DEFAULTS[env].to_dict()
