"""The PiPER MJCF, its kinematics and the reaching task (real MuJoCo)."""

from __future__ import annotations

import re

import mujoco
import numpy as np
import pytest

from ws_sim.piper import (ACTUATORS, JOINTS, PIPER_SCENE_XML, PIPER_XML, READY_JOINTS, IKError, load_piper, solve_ik,
                          tcp_pose)


@pytest.fixture(scope="module")
def piper():
    return load_piper()


def test_joint_ranges_and_servos_are_the_published_figures(piper):
    model, _ = piper
    deg = np.radians
    sdk = {"joint1": (-deg(150), deg(150)), "joint2": (0, 3.14), "joint3": (-2.967, 0), "joint4": (-1.745, 1.745),
           "joint5": (-1.22, 1.22), "joint6": (-2.0944, 2.0944), "joint7": (0, 0.035), "joint8": (-0.035, 0)}
    for name, (lo, hi) in sdk.items():
        np.testing.assert_allclose(model.joint(name).range, (lo, hi), atol=2e-4, err_msg=name)
    assert tuple(model.joint(i).name for i in range(model.njnt)) == JOINTS
    assert tuple(model.actuator(i).name for i in range(model.nu)) == ACTUATORS
    kp = [model.actuator(a).gainprm[0] for a in ACTUATORS]
    assert kp == [80, 80, 80, 40, 10, 10, 40]  # MuJoCo Menagerie's gains
    assert model.opt.timestep == 0.002
    arm_mass = sum(model.body(f"link{i}").mass[0] for i in range(1, 9))
    assert arm_mass == pytest.approx(0.71 + 1.16 + 0.5 + 0.38 + 0.383 + 0.457 + 0.05)  # S2's masses


def test_every_source_the_mjcf_cites_is_named_in_its_header():
    text = PIPER_XML.read_text()
    header, body = text.split("-->", 1)
    cited = set(re.findall(r"\[(S\d)\]", text))
    assert cited and all(f"[{s}] " in header for s in cited)
    assert "agilexrobotics/piper_sdk" in header and "mujoco_menagerie" in header


def test_servos_hold_the_ready_pose_and_the_fingers_mirror(piper):
    model, _ = piper
    data = mujoco.MjData(model)
    data.qpos[:6] = data.ctrl[:6] = READY_JOINTS
    data.ctrl[6] = 0.02
    mujoco.mj_forward(model, data)
    p0, _ = tcp_pose(model, data)
    mujoco.mj_step(model, data, nstep=1000)  # 2 s
    p1, rot = tcp_pose(model, data)
    assert np.linalg.norm(p1 - p0) < 0.005
    assert rot[2, 2] < -0.99  # the tool points down
    assert data.qpos[6] == pytest.approx(0.02, abs=1e-3) and data.qpos[7] == pytest.approx(-0.02, abs=1e-3)


def test_inverse_kinematics_round_trips_and_refuses_the_unreachable(piper):
    model, _ = piper
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = READY_JOINTS + rng.uniform(-0.4, 0.4, 6)
        q = np.clip(q, *model.jnt_range[:6].T)
        data.qpos[:6] = q
        mujoco.mj_kinematics(model, data)
        target = data.site("tcp").xpos.copy()
        sol = solve_ik(model, target)
        data.qpos[:6] = sol
        mujoco.mj_kinematics(model, data)
        assert np.linalg.norm(data.site("tcp").xpos - target) < 1e-3
    down = solve_ik(model, [0.3, 0.1, 0.05], approach=[0, 0, -1], yaw=0.0)
    data.qpos[:6] = down
    mujoco.mj_kinematics(model, data)
    rot = data.site("tcp").xmat.reshape(3, 3)
    assert rot[2, 2] < -0.999 and abs(rot[1, 1]) > 0.999  # pointing down, fingers opening along y
    with pytest.raises(IKError, match="reach"):
        solve_ik(model, [1.0, 0.0, 0.1])
    with pytest.raises(ValueError, match="finite"):
        solve_ik(model, [np.nan, 0.0, 0.1])


def test_oracle_mppi_reaches_the_goal():
    from ws_mppi.config import default_config
    from ws_mppi.runner import make_controller
    from ws_sim.envs import make_env

    env = make_env("piper")
    state, info = env.reset(seed=3, options={"goal": [0.3, 0.15, 0.2]})
    assert info["distance"] > 0.1
    ctl = make_controller(env, "oracle", default_config("piper"), seed=0, nthread=1)
    try:
        for t in range(40):
            state, reward, terminated, truncated, info = env.step(ctl.plan(state, t))
    finally:
        ctl.close()
    assert info["success"] and reward == pytest.approx(-info["distance"])
    with pytest.raises(IKError):
        env.set_goal([0.0, 0.0, 1.5])


def test_cameras_render_the_scene():
    model, data = load_piper(PIPER_SCENE_XML)
    data.qpos[:6] = READY_JOINTS
    mujoco.mj_forward(model, data)
    with mujoco.Renderer(model, 48, 64) as r:
        for cam in ("scene", "front", "wrist"):
            r.update_scene(data, camera=cam)
            rgb = r.render()
            assert rgb.shape == (48, 64, 3) and rgb.std() > 5, cam
            r.enable_depth_rendering()
            depth = r.render()
            r.disable_depth_rendering()
            assert np.all(np.isfinite(depth)) and depth.min() > 0, cam
