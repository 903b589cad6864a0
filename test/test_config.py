"""The YAML configs under config/ mirror the built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ws_mppi.config import DEFAULTS, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("env", sorted(DEFAULTS))
def test_yaml_equals_builtin_default(env):
    assert load_config(CONFIG_DIR / f"mppi_{env}.yaml").to_dict() == DEFAULTS[env].to_dict()


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("mppi_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_controller_config_loads(path):
    """Variants beside the defaults (e.g. mppi_hopper_long.yaml, the seed's planner) stay valid configs."""
    cfg = load_config(path)
    assert cfg.mppi.horizon >= 1 and cfg.mppi.samples >= 2


def test_the_seed_planner_config_says_what_the_seed_code_uses():
    cfg = load_config(CONFIG_DIR / "mppi_hopper_long.yaml")
    assert (cfg.mppi.horizon, cfg.mppi.temperature, cfg.mppi.noise, cfg.mppi.ar_coeffs, cfg.mppi.step_size,
            cfg.fall_penalty_per_step) == (100, 0.5, "ar", [0.5, 0.5, 0.0], 0.4, 10.0)
