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


@pytest.mark.parametrize("task", ["pick_place", "stack"])
def test_the_expert_carries_a_cube_across_the_workspace_with_a_finger_yaw_it_can_hold_there(task):
    """A cube on the left, turned so that its nearest finger yaw is 15-45 degrees, carried to a goal on the
    right: J6 cannot hold that yaw at the goal, so the expert must grip the cube across the other faces or
    with the gripper turned half a turn (it used to choose by the grasp point alone and missed these goals)."""
    env = PiperManipEnv(task, workspace="full")
    expert = ScriptedExpert(env)
    seeds, seed = [], 0
    while len(seeds) < 6:
        env.reset(seed=seed)
        o = env.objects
        goal = o[14:16] if task == "pick_place" else o[7:9]
        yaw = np.degrees(2 * np.arctan2(o[6], o[3])) % 90
        if o[1] > 0.05 and goal[1] < -0.05 and 15 < yaw < 45:
            seeds.append(seed)
        seed += 1
    wins = [_run(env, expert, s)[1]["success"] for s in seeds]
    assert all(wins), dict(zip(seeds, wins))


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


def test_stratified_layouts_cover_the_band_evenly():
    """``reset(options={"layout_u": u})`` puts the cube where the fractions of its ranges say; the demonstrations'
    Latin hypercube has one layout in each stratum of every variable."""
    from ws_sim.demos import latin_hypercube
    from ws_sim.piper_tasks import _BEARING, _RADIUS

    env = PiperManipEnv("pick_place", randomize=False)
    u = latin_hypercube(40, 5, np.random.default_rng(0))
    for k in range(5):
        assert sorted(np.floor(u[:, k] * 40).astype(int)) == list(range(40))
    yaws, moved = [], 0
    for row in u:
        obs, _ = env.reset(seed=1, options={"layout_u": row})
        cube, target = obs["objects"][:2], obs["objects"][14:16]
        assert np.hypot(*cube) == pytest.approx(_RADIUS[0] + row[0] * (_RADIUS[1] - _RADIUS[0]))
        assert np.arctan2(cube[1], cube[0]) == pytest.approx(_BEARING[0] + row[1] * (_BEARING[1] - _BEARING[0]))
        q = obs["objects"][3:7]
        yaws.append(2 * np.arctan2(q[3], q[0]))
        assert np.linalg.norm(target - cube) > 0.1
        moved += np.hypot(*target) != pytest.approx(_RADIUS[0] + row[3] * (_RADIUS[1] - _RADIUS[0]))
    np.testing.assert_allclose(yaws, -np.pi / 4 + u[:, 2] * np.pi / 2, atol=1e-6)
    assert moved < 20  # a target too near the cube is drawn again; most keep their stratum
    with pytest.raises(ValueError, match="layout_u"):
        env.reset(seed=0, options={"layout_u": [0.5] * 4})


def test_bad_actions_and_tasks_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        PiperManipEnv("fold_laundry")
    env = PiperManipEnv("push")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(7, np.nan))
    with pytest.raises(ValueError, match="unknown failure"):
        ScriptedExpert(env, failure="sneeze")


def test_the_evaluation_reports_each_layout_and_where_the_fingers_closed():
    """``evaluate_policy`` gives each episode's layout (the cube's yaw, its and the goal's bearings, as the reset put
    them) and, for a grasping task, the fingers' offset and yaw error as the first grasp closes: the expert closes
    on the cube's centre, square to its faces. ``successes_by_layout`` counts every episode once; a push, which
    never opens the gripper, has no grasp figures."""
    from ws_policy.evaluate import evaluate_policy

    rep = evaluate_policy("scripted", "pick_place", 6, seed=6000, size=32, video=False, workspace="full")
    env = PiperManipEnv("pick_place", workspace="full")
    for r in rep["episodes_detail"]:
        env.reset(seed=r["seed"])
        o = env.objects
        assert r["cube_yaw_deg"] == pytest.approx(np.degrees(2 * np.arctan2(o[6], o[3])), abs=0.01)
        assert r["goal_bearing_deg"] == pytest.approx(np.degrees(np.arctan2(o[15], o[14])), abs=0.01)
        assert r["cube_bearing_deg"] == pytest.approx(np.degrees(np.arctan2(o[1], o[0])), abs=0.01)
        assert 0 <= r["grasp_offset_m"] < 0.01 and abs(r["grasp_yaw_error_deg"]) < 5
    cells = rep["successes_by_layout"]
    assert len(cells) == 4 and sum(n for _, n in cells.values()) == 6
    assert sum(w for w, _ in cells.values()) == rep["successes"]
    assert rep["grasp_offset_m"]["median_all"] < 0.01
    push = evaluate_policy("scripted", "push", 1, seed=6000, size=32, video=False, workspace="full")
    assert "grasp_offset_m" not in push["episodes_detail"][0] and "successes_by_layout" not in push
