"""The YAML configs under config/ mirror the built-in defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from ws_mppi.config import DEFAULTS, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("env", sorted(DEFAULTS))
def test_yaml_equals_builtin_default(env):
    assert load_config(CONFIG_DIR / f"mppi_{env}.yaml").to_dict() == DEFAULTS[env].to_dict()


def test_the_short_horizon_yaml_is_the_earlier_default():
    from ws_mppi.config import SHORT_HORIZON, short_horizon_config

    assert load_config(CONFIG_DIR / "mppi_short_horizon.yaml").to_dict() == SHORT_HORIZON.to_dict()
    fresh = short_horizon_config()
    fresh.mppi.horizon = 5  # a copy: the module's constant is untouched
    assert SHORT_HORIZON.mppi.horizon == 20


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("mppi_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_controller_config_loads(path):
    """Variants beside the defaults (e.g. mppi_hopper_long.yaml, the seed's planner) stay valid configs."""
    cfg = load_config(path)
    assert cfg.mppi.horizon >= 1 and cfg.mppi.samples >= 2


def test_the_seed_planner_config_says_what_the_seed_code_uses():
    cfg = load_config(CONFIG_DIR / "mppi_hopper_long.yaml")
    assert (cfg.mppi.horizon, cfg.mppi.temperature, cfg.mppi.noise, cfg.mppi.ar_coeffs, cfg.mppi.step_size,
            cfg.fall_penalty_per_step) == (100, 0.5, "ar", [0.5, 0.5, 0.0], 0.4, 10.0)


# --- issue 25: cost weights in the config, keys an environment ignores are an error ---

def test_go1_and_piper_cost_weights_come_from_the_yaml():
    from ws_mppi.costs import GO1_COST_DEFAULTS, PIPER_COST_DEFAULTS

    assert load_config(CONFIG_DIR / "mppi_go1.yaml", "go1").cost == GO1_COST_DEFAULTS
    assert load_config(CONFIG_DIR / "mppi_piper.yaml", "piper").cost == PIPER_COST_DEFAULTS
    for env in ("hopper", "walker2d"):
        assert load_config(CONFIG_DIR / f"mppi_{env}.yaml", env).cost == {}
    old = load_config(CONFIG_DIR / "mppi_go1_v04.yaml", "go1")  # the 0.4 m/s controller of the older figures
    assert old.cost == {**GO1_COST_DEFAULTS, "v_des": 0.4}
    assert old.mppi == load_config(CONFIG_DIR / "mppi_go1.yaml", "go1").mppi


@pytest.mark.parametrize("env", ["go1", "piper"])
@pytest.mark.parametrize("key,value", [("termination_penalty", 50.0), ("termination_penalty", 80.0),
                                       ("fall_penalty_per_step", 10.0), ("fall_penalty_mode", "held"),
                                       ("reference", None), ("reference_scale", 0.1), ("reference_align", "nearest"),
                                       ("expert_value_weight", 1.0)])
def test_a_key_the_environment_ignores_is_an_error(tmp_path, env, key, value):
    import yaml

    from ws_mppi.config import ConfigError, default_config

    d = default_config(env).to_dict()
    for k in ("termination_penalty", "fall_penalty_per_step", "fall_penalty_mode", "reference", "reference_scale",
              "reference_pos_weight", "reference_vel_weight", "reference_align", "expert_value_weight"):
        d.pop(k)
    d[key] = value
    if key == "expert_value_weight":
        d["expert"] = "default"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    cfg = load_config(path)  # without an environment: only unknown keys are checked
    with pytest.raises(ConfigError, match=rf"{key}.*ignored by the {env} controller"):
        load_config(path, env)
    with pytest.raises(ConfigError, match=rf"{key}.*{env}"):
        cfg.validate_for(env)


@pytest.mark.parametrize("env", sorted(DEFAULTS))
def test_cost_keys_are_checked_per_environment(env):
    import dataclasses

    from ws_mppi.config import COST_KEYS, ConfigError, default_config

    cfg = default_config(env)
    assert cfg.validate_for(env) is cfg
    with pytest.raises(ConfigError, match=rf"w_nope.*{env}"):
        dataclasses.replace(cfg, cost={**cfg.cost, "w_nope": 1.0}).validate_for(env)
    if not COST_KEYS.get(env):
        with pytest.raises(ConfigError, match=rf"{env} takes no cost"):
            dataclasses.replace(cfg, cost={"w_q": 1.0}).validate_for(env)


def test_cost_values_must_be_numbers():
    from ws_mppi.config import ConfigError, ControllerConfig

    with pytest.raises(ConfigError, match="cost w_z must be a number"):
        ControllerConfig.from_dict({"cost": {"w_z": "high"}})
    with pytest.raises(ConfigError, match="cost must be a mapping"):
        ControllerConfig.from_dict({"cost": [1, 2]})


@pytest.mark.parametrize("env", ["go1", "piper"])
def test_save_config_for_an_environment_round_trips(tmp_path, env):
    from ws_mppi.config import default_config, save_config

    save_config(default_config(env), tmp_path / "c.yaml", env)
    assert load_config(tmp_path / "c.yaml", env).to_dict() == DEFAULTS[env].to_dict()


def test_the_walker2d_margin_config_is_the_long_expert_planner_plus_its_margin():
    """``mppi_walker2d_long_expert_margin.yaml`` differs from ``mppi_walker2d_long_expert.yaml`` in the healthy
    margin alone, so the two rows of docs/control.md compare that and nothing else."""
    a = load_config(CONFIG_DIR / "mppi_walker2d_long_expert_margin.yaml", "walker2d").to_dict()
    b = load_config(CONFIG_DIR / "mppi_walker2d_long_expert.yaml", "walker2d").to_dict()
    assert {k: a[k] for k in a if a[k] != b[k]} == {"healthy_margin": [0.15, 0.25], "healthy_margin_weight": 10.0}
