"""PiPER manipulation tasks: instructions, success detection, domain randomisation, scripted experts."""

from __future__ import annotations

import numpy as np
import pytest

from ws_sim.piper_tasks import COLORS, TASKS, PiperManipEnv, ScriptedExpert


def _run(env, expert, seed):
    obs, info = env.reset(seed=seed)
    expert.reset()
    assert not info["success"]
    for _ in range(env.max_episode_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act())
        if terminated or truncated:
            break
    return obs, info, reward


@pytest.mark.parametrize("task", TASKS)
def test_the_scripted_expert_solves_each_task_and_success_is_detected(task):
    env = PiperManipEnv(task)
    expert = ScriptedExpert(env)
    results = [_run(env, expert, seed) for seed in range(5)]
    wins = [info["success"] for _, info, _ in results]
    assert sum(wins) >= 4, wins
    for obs, info, reward in results:
        if info["success"]:
            assert reward == 1.0  # the step that solved it (the episode ends there)
        words = info["instruction"].split()
        assert task.split("_")[0] in words and sum(w in COLORS for w in words) == 2


@pytest.mark.parametrize("failure", ScriptedExpert.FAILURES)
def test_a_failing_expert_fails_and_is_not_counted_a_success(failure):
    env = PiperManipEnv("pick_place")
    expert = ScriptedExpert(env, failure=failure)
    wins = [_run(env, expert, seed)[1]["success"] for seed in range(3)]
    assert not any(wins), (failure, wins)


def test_domain_randomisation_changes_the_images_not_the_task_layout_space():
    env = PiperManipEnv("pick_place", render_mode="rgbd", width=48, height=48, wrist=True)
    a, _ = env.reset(seed=1)
    b, _ = env.reset(seed=2)
    assert a["rgb"].shape == (48, 48, 3) and a["rgb"].dtype == np.uint8 and a["wrist_rgb"].shape == (48, 48, 3)
    assert a["depth"].shape == (48, 48) and np.all(np.isfinite(a["depth"])) and a["depth"].min() > 0.1
    assert np.abs(a["rgb"].astype(int) - b["rgb"].astype(int)).mean() > 5  # lighting / texture / objects differ
    assert env.observation_space.contains({k: v for k, v in a.items()})
    plain = PiperManipEnv("pick_place", randomize=False)
    light = plain.model.light_diffuse.copy()
    plain.reset(seed=1)
    plain.reset(seed=2)
    np.testing.assert_array_equal(plain.model.light_diffuse, light)
    env.close()


def test_the_task_camera_sees_no_green_but_the_layouts():
    """The reaching scene's goal marker is green; in the manipulation tasks it must not show (a policy told
    to find the green cube would see it beside the gripper)."""
    env = PiperManipEnv("pick_place", render_mode="rgbd", randomize=False)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        if "green" not in (env.layout.a, env.layout.t):
            break
    rgb = obs["rgb"].astype(int)
    green = (rgb[..., 1] > 120) & (rgb[..., 0] < 90) & (rgb[..., 2] < 90)
    assert green.sum() == 0, (env.layout, int(green.sum()))
    env.reset(seed=3)
    env.model.geom_rgba[env._geom["cube_a"]] = (0.1, 0.7, 0.2, 1.0)  # the check itself sees a green cube
    rgb = env._obs()["rgb"].astype(int)
    assert ((rgb[..., 1] > 120) & (rgb[..., 0] < 90) & (rgb[..., 2] < 90)).sum() >= 9  # a cube is about 6 px wide
    env.close()


def test_the_narrow_workspace_keeps_cube_and_target_in_their_patches():
    from ws_sim.piper_tasks import _NARROW

    env = PiperManipEnv("pick_place", workspace="narrow")
    for seed in range(300):  # every reset finds room for the distractor too
        obs, _ = env.reset(seed=seed)
        for role, xy in (("cube", obs["objects"][:2]), ("target", obs["objects"][14:16])):
            (r0, dr), (b0, db) = _NARROW[role]
            assert abs(np.hypot(*xy) - r0) <= dr + 1e-9 and abs(np.arctan2(xy[1], xy[0]) - b0) <= db + 1e-9
    with pytest.raises(ValueError, match="unknown workspace"):
        PiperManipEnv("pick_place", workspace="tiny")


def test_bad_actions_and_tasks_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        PiperManipEnv("fold_laundry")
    env = PiperManipEnv("push")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(7, np.nan))
    with pytest.raises(ValueError, match="unknown failure"):
        ScriptedExpert(env, failure="sneeze")
