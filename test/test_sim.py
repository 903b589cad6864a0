"""The simulation layer against real MuJoCo and Gymnasium."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ws_sim.envs import NonFiniteStateError, UnknownEnvironmentError, check_state, make_env
from ws_sim.oracle import MuJoCoOracle


def test_hopper_channels_carry_body_joint_kind_unit(hopper_env):
    names = [c.name for c in hopper_env.state_channels]
    assert names[:3] == ["qpos/rootx", "qpos/rootz", "qpos/rooty"]
    assert len(names) == hopper_env.nq + hopper_env.nv == 12
    by = {c.name: c for c in hopper_env.state_channels}
    assert by["qpos/rootx"].unit == "m" and by["qpos/rooty"].unit == "rad"
    assert by["qvel/rootx"].unit == "m/s" and by["qvel/thigh_joint"].unit == "rad/s"
    assert by["qpos/thigh_joint"].body == "thigh" and by["qpos/thigh_joint"].kind == "qpos"
    assert by["qpos/thigh_joint"].min == pytest.approx(-2.61799388) and by["qpos/thigh_joint"].max == 0.0
    assert math.isinf(by["qpos/rootx"].min)
    acts = hopper_env.action_channels
    assert [a.joint for a in acts] == ["thigh_joint", "leg_joint", "foot_joint"]
    assert all(a.kind == "action" and (a.min, a.max) == (-1.0, 1.0) for a in acts)


def test_walker_state_is_full_mujoco_state():
    env = make_env("walker2d")
    state, info = env.reset(seed=3)
    assert state.shape == (env.nq + env.nv,) == (18,)
    np.testing.assert_array_equal(state[: env.nq], env.unwrapped.data.qpos)
    # Gymnasium's own observation drops the root x; ours keeps it
    np.testing.assert_allclose(info["gym_obs"][: env.nq - 1], state[1: env.nq])
    env.close()


def test_unknown_environment_is_named():
    with pytest.raises(UnknownEnvironmentError, match="'cheetah'.*hopper"):
        make_env("cheetah")


def test_task_reward_equals_gymnasium_reward(hopper_env):
    rng = np.random.default_rng(0)
    s, _ = hopper_env.reset(seed=1)
    for _ in range(20):
        a = rng.uniform(-1, 1, 3)
        s2, r, term, _, _ = hopper_env.step(a)
        assert hopper_env.task.reward(s, a, s2) == pytest.approx(r, abs=1e-9)
        assert hopper_env.task.is_healthy(s2) == (not term)
        s = s2
        if term:
            break


def test_oracle_rollout_reproduces_environment_steps(hopper_env):
    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=2)
    s, _ = hopper_env.reset(seed=2)
    rng = np.random.default_rng(1)
    acts = rng.uniform(-1, 1, (4, 15, 3))
    pred = oracle.rollout(s, acts)
    assert pred.shape == (4, 15, 12)
    for t in range(15):
        s_t, *_ = hopper_env.step(acts[2, t])
        np.testing.assert_allclose(pred[2, t], s_t, atol=1e-9)
    # the samples really differ from each other
    assert np.abs(pred[0, -1] - pred[1, -1]).max() > 1e-3
    with pytest.raises(ValueError, match="actions have shape"):
        oracle.rollout(s, acts[..., :2])
    # one start per sequence: each row as if rolled out alone from its own start
    starts = np.stack([s, pred[0, 4], pred[1, 9], pred[3, 2]])
    each = oracle.rollout(starts, acts)
    for k in range(4):
        np.testing.assert_allclose(each[k], oracle.rollout(starts[k], acts[k:k + 1])[0], atol=1e-12)
    np.testing.assert_allclose(each[0], pred[0], atol=1e-12)
    with pytest.raises(ValueError, match=r"state has shape \(3, 12\), expected \(12,\) or \(4, 12\)"):
        oracle.rollout(starts[:3], acts)
    oracle.close()


def test_nan_state_is_rejected_with_its_channel():
    with pytest.raises(NonFiniteStateError, match=r"channels \[4\]"):
        check_state(np.array([0, 1, 0, 0, np.nan, 0.0]), 6)
    with pytest.raises(ValueError, match="shape"):
        check_state(np.zeros(5), 6)
