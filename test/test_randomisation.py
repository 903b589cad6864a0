"""The Go1 across the sim-to-real gap: randomised evaluation physics (real MuJoCo)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ws_sim.go1 import HOME_JOINTS
from ws_sim.randomisation import Go1Randomisation, RandomisedGo1Env


def _nominal_draw(latency_s: float = 0.0) -> dict:
    """The MJCF's own values as a draw (joint damping 0.5, no friction, floor friction 0.9)."""
    ones = np.ones(12)
    return {"latency_s": latency_s, "kp_scale": ones, "kv_scale": ones, "joint_damping": 0.5 * ones,
            "joint_friction": 0 * ones, "trunk_mass_kg": 0.0, "trunk_com_m": np.zeros(3), "ground_friction": 0.9}


def test_a_draw_changes_the_evaluated_physics_and_keeps_the_nominal_model():
    draw = Go1Randomisation().sample(np.random.default_rng(3))
    env = RandomisedGo1Env(draw)
    nom, m = env.nominal_model, env.model
    np.testing.assert_allclose(m.actuator_gainprm[:, 0], nom.actuator_gainprm[:, 0] * draw["kp_scale"])
    np.testing.assert_allclose(m.actuator_biasprm[:, 2], nom.actuator_biasprm[:, 2] * draw["kv_scale"])
    trunk = m.body("trunk").id
    assert m.body_mass[trunk] == pytest.approx(nom.body_mass[trunk] + draw["trunk_mass_kg"])
    assert m.geom_friction[m.geom("floor").id, 0] == pytest.approx(draw["ground_friction"])
    assert 0.8 <= draw["kp_scale"].min() and draw["kp_scale"].max() <= 1.2 and 0 <= draw["latency_s"] <= 0.02
    with pytest.raises(ValueError, match="longer than a control step"):
        RandomisedGo1Env(_nominal_draw(latency_s=0.05))


def test_latency_delays_each_command_by_whole_physics_steps():
    """With the nominal physics and a latency of one control step, every step runs the previous command:
    the states equal the nominal robot's one command behind."""
    late = RandomisedGo1Env(_nominal_draw(latency_s=0.02))
    ref = RandomisedGo1Env(None)
    s1, _ = late.reset(seed=0)
    s2, _ = ref.reset(seed=0)
    np.testing.assert_array_equal(s1, s2)
    commands = [HOME_JOINTS + 0.1 * np.sin(k) for k in range(5)]
    previous = HOME_JOINTS.copy()
    for cmd in commands:
        s1, *_ = late.step(cmd)
        s2, *_ = ref.step(previous)
        previous = cmd
        np.testing.assert_allclose(s1, s2, atol=1e-12)


def test_ws_mppi_randomised_reports_nominal_and_randomised_walks(tmp_path, capsys):
    from ws_cli.main import main

    assert main(["mppi", "randomised", "--dynamics", "default,oracle", "--seeds", "0", "--seconds", "0.1",
                 "--samples", "8", "--threads", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "randomised.json").read_text())
    for label in ("default", "oracle"):
        rows = report["controllers"][label]
        assert rows["randomised"]["per_seed"][0]["draw"]["latency_s"] >= 0
        assert rows["nominal"]["per_seed"][0]["draw"] is None and rows["nominal"]["walks"] == 1
    assert main(["mppi", "randomised", "--dynamics", "default", "--seeds", "1", "--seconds", "0.2", "--on-estimate",
                 "--threads", "1", "--out", str(tmp_path / "e")]) == 0
    on_est = json.loads((tmp_path / "e" / "randomised.json").read_text())
    assert on_est["on_estimate"] and "velocity_rmse" in on_est["controllers"]["default"]["randomised"]["per_seed"][0]
    capsys.readouterr()
    assert main(["mppi", "randomised", "--env", "hopper", "--out", str(tmp_path / "h")]) == 2
