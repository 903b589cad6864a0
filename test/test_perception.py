"""Object perception and the pose policy (ws_policy/perception.py): the perception learns where the cube and the
target are from the cameras, the pose policy chains it to a state policy over its estimate, round-trips through the
checkpoint, runs through PolicyRunner and ``ws policy eval``, and the CLI refuses what does not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ws_policy.data import collect_demos, write_demos
from ws_policy.errors import PolicyError
from ws_policy.model import default_vocabulary, object_targets
from ws_policy.perception import (ObjectPerception, PerceptionConfig, PosePolicy, PosePolicyConfig, perception_errors,
                                  reset_frames, train_perception)
from ws_policy.state_policy import StatePolicyConfig, state_features, train_state_policy
from ws_policy.train import Normalizer, PolicyCheckpointError, PolicyRunner, load_policy, save_policy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Six stratified pick-and-place demonstrations over the whole band, both cameras, 32 px."""
    eps, attrs = collect_demos("pick_place", 6, seed=0, size=32, wrist=True, stratified=True)
    return eps, attrs, write_demos(eps, attrs, tmp_path_factory.mktemp("perception") / "demos.hdf5")


def _cfg(attrs, **kw):
    return PerceptionConfig(**{"image_size": 32, "crop": 28, "keypoints": 8, "trunk_width": 8, "trunk_blocks": 1,
                               "d": 16, "hidden": 64, "vocab": tuple(default_vocabulary()),
                               "fov_y_deg": attrs["fovy"], "wrist_fov_y_deg": attrs["wrist_fovy"], **kw})


def test_perception_learns_where_the_cube_and_target_are(demos):
    """150 steps take the cube's estimate on the demonstrations' frames from about the error of always answering
    the mean layout to well under half of it, and the target's likewise."""
    eps, attrs, _ = demos
    untrained, _ = train_perception(_cfg(attrs), eps, steps=1, batch_size=32, lr=3e-3)
    before = perception_errors(untrained, eps)
    model, hist = train_perception(_cfg(attrs), eps, steps=150, batch_size=32, lr=3e-3)
    after = perception_errors(model, eps)
    assert after["frames"] == sum(len(e.qpos) for e in eps if e.success)
    assert after["cube_m"]["median"] < 0.4 * after["hold_mean_cube_m"], (before, after)
    assert after["target_m"]["median"] < 0.4 * before["target_m"]["median"], (before, after)
    assert np.mean(hist["loss"][-20:]) < 0.2 * np.mean(hist["loss"][:20])
    first = perception_errors(model, eps, first_only=True)
    assert first["frames"] == sum(e.success for e in eps)
    with pytest.raises(Exception, match="wrist camera"):
        train_perception(_cfg(attrs), collect_demos("pick_place", 1, seed=0, size=32)[0], steps=1)
    with pytest.raises(Exception, match="32 px"):
        train_perception(_cfg(attrs, image_size=64, crop=56), eps, steps=1)
    with pytest.raises(ValueError, match="vocabulary"):
        PerceptionConfig()
    # the joints are read only when asked (a shortcut through the expert's motion otherwise)
    g = torch.Generator().manual_seed(0)
    rgb, depth = torch.rand(2, 6, 32, 32, generator=g) * 2 - 1, torch.rand(2, 2, 32, 32, generator=g) + 0.3
    words = torch.ones(2, 16, dtype=torch.long)
    for joints in (False, True):
        net = ObjectPerception(_cfg(attrs, joints=joints)).eval()
        with torch.no_grad():
            a, b = (net(rgb, depth, torch.full((2, 8), v), words) for v in (-0.5, 0.5))
        assert torch.equal(a, b) != joints


def test_the_pose_policy_chains_perception_and_actor_and_round_trips(demos, tmp_path):
    """The actor reads the joints and ``object_targets``; the pose policy feeds it the perception's estimate, saves
    and loads as one checkpoint (weights only), runs through PolicyRunner without any simulator state, and reports
    where it places the objects."""
    eps, attrs, _ = demos
    e = next(e for e in eps if e.success)
    norm = Normalizer.from_episodes(eps)
    feats = state_features(norm.state(e.qpos[:3]), e.objects[:3], "targets")
    np.testing.assert_allclose(feats, np.concatenate([norm.state(e.qpos[:3]), object_targets(e.objects[:3])], -1),
                               atol=1e-6)
    actor, _ = train_state_policy(StatePolicyConfig(chunk=4, hidden=64, layers=2, inputs="targets"), eps, steps=50)
    perception, _ = train_perception(_cfg(attrs), eps, steps=5, batch_size=8)
    with pytest.raises(ValueError, match="inputs 'targets'"):
        PosePolicy(perception, train_state_policy(StatePolicyConfig(chunk=4, hidden=16, layers=1), eps, steps=1)[0])
    model = PosePolicy(perception, actor)
    model.normalizer = actor.normalizer
    assert not model.cfg.privileged and model.cfg.wrist and model.cfg.chunk == 4
    obs = {"rgb": e.rgb[0], "depth": e.depth[0].astype(np.float32), "wrist_rgb": e.wrist_rgb[0],
           "wrist_depth": e.wrist_depth[0].astype(np.float32), "qpos": e.qpos[0], "instruction": e.instruction}
    chunk = PolicyRunner(model, seed=1)(obs)
    # the same as the actor given the perception's estimate
    runner = PolicyRunner(model, seed=1)
    rgb, depth, state, words = runner._tensors(obs)
    with torch.no_grad():
        estimate = perception(rgb, depth, state, words)
    direct = actor.sample(torch.cat([state, estimate], -1), torch.Generator().manual_seed(1))[0].numpy()
    np.testing.assert_allclose(chunk, np.clip(actor.normalizer.actions_back(direct), Normalizer.for_piper().action_low,
                                              Normalizer.for_piper().action_high), atol=1e-5)
    path = save_policy(model, tmp_path / "pose.pt", {"kind": "pose"})
    back, payload = load_policy(path)
    assert payload["kind"] == "pose" and isinstance(back, PosePolicy)
    np.testing.assert_allclose(PolicyRunner(back, seed=1)(obs), chunk, atol=1e-6)
    where = PolicyRunner(back).object_positions(obs)
    assert where["cube"].shape == (3,) and where["target"].shape == (3,)
    assert isinstance(PosePolicyConfig(perception.cfg, actor.cfg).vocab, tuple)
    assert isinstance(back.perception, ObjectPerception)
    assert back.object_memory == 0 and payload["extra"]["object_memory"] == 0
    with pytest.raises(ValueError, match="object_memory"):
        PosePolicy(perception, actor, object_memory=-2)
    payload["extra"]["object_memory"] = "2; import os"  # not a number: refused by name, nothing run
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(PolicyCheckpointError, match="object_memory"):
        load_policy(tmp_path / "bad.pt")


def test_ws_policy_train_pose_and_eval(demos, tmp_path, capsys):
    """``ws policy train --model pose`` writes a checkpoint ``ws policy eval`` runs (with the object head's
    first-frame localisation in its report); flags that do not apply are refused before anything is written."""
    from ws_cli.main import main

    _, _, path = demos
    out = tmp_path / "pose.pt"
    common = ["policy", "train", "--demos", str(path), "--threads", "1", "--chunk", "4"]
    assert main([*common, "--model", "pose", "--steps", "20", "--perception-steps", "5", "--keypoints", "4",
                 "--trunk-width", "8", "--perception-batch-size", "8", "--perception-layouts", "3",
                 "--perception-joints", "--out", str(out)]) == 0
    assert "pose: perception then actor" in capsys.readouterr().out
    model, payload = load_policy(out)
    assert payload["extra"]["history"]["perception"]["steps"] == 5
    assert payload["extra"]["history"]["perception"]["layouts"] == 3 and model.perception.cfg.joints
    assert main(["policy", "eval", "--checkpoint", str(out), "--episodes", "1", "--seed", "3000", "--latency", "0",
                 "--no-video", "--threads", "1", "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["episodes"] == 1 and "start_cube_error_m" in report
    assert "the object head in each first frame" in capsys.readouterr().out
    for bad in (["--model", "pose", "--privileged"], ["--model", "pose", "--state-inputs", "targets"],
                ["--model", "mot", "--state-inputs", "targets"]):
        assert main([*common, *bad, "--steps", "1", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
    assert main([*common, "--model", "state", "--state-inputs", "targets", "--steps", "5",
                 "--out", str(tmp_path / "s.pt")]) == 0
    assert load_policy(tmp_path / "s.pt")[0].cfg.inputs == "targets"
    # how the policy runs travels with it: --init P --perception-steps 0 --object-memory N re-saves P with N
    assert model.object_memory == 0 and PolicyRunner(model).memory is None
    kept = tmp_path / "pose_mem.pt"
    assert main([*common, "--model", "pose", "--init", str(out), "--perception-steps", "0", "--object-memory", "2",
                 "--out", str(kept)]) == 0
    back, payload = load_policy(kept)
    assert back.object_memory == 2 and payload["extra"]["object_memory"] == 2
    for a, b in zip(back.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # the same weights
    assert PolicyRunner(back).memory.frames == 2 and PolicyRunner(back, object_memory=0).memory is None
    again = tmp_path / "pose_mem2.pt"  # an --init that has a memory passes it on
    assert main([*common, "--model", "pose", "--init", str(kept), "--perception-steps", "0", "--out", str(again)]) == 0
    assert load_policy(again)[0].object_memory == 2
    for bad in (["--model", "pose", "--init", str(out), "--perception-steps", "0", "--object-memory", "-1"],
                ["--model", "state", "--state-inputs", "targets", "--object-memory", "2"]):
        assert main([*common, *bad, "--steps", "1", "--out", str(tmp_path / "y.pt")]) == 2
        assert "--object-memory" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()


def test_reset_frames_are_first_frames_of_new_stratified_layouts(demos):
    """``reset_frames``: one frame per fresh layout, as the environment shows it after a reset with that seed and
    stratum; the perception trains on them beside the demonstrations."""
    from ws_sim.demos import latin_hypercube
    from ws_sim.piper_tasks import PiperManipEnv

    eps, attrs, _ = demos
    frames = reset_frames("pick_place", 4, seed=7, size=32)
    assert len(frames) == 4 and frames[0].rgb.shape == (1, 32, 32, 3) and frames[0].wrist_depth.shape == (1, 32, 32)
    env = PiperManipEnv("pick_place", render_mode="rgbd", width=32, height=32, wrist=True)
    obs, info = env.reset(seed=9, options={"layout_u": latin_hypercube(4, 5, np.random.default_rng([7, 2]))[2]})
    env.close()
    np.testing.assert_allclose(frames[2].objects[0], obs["objects"])
    assert frames[2].instruction == info["instruction"] and np.array_equal(frames[2].rgb[0], obs["rgb"])
    assert len({tuple(np.round(f.objects[0, :2], 3)) for f in frames}) == 4  # four different layouts
    model, _ = train_perception(_cfg(attrs), eps + frames, steps=3, batch_size=8)
    assert perception_errors(model, frames)["frames"] == 4
    with pytest.raises(ValueError, match="n must be"):
        reset_frames("pick_place", 0, seed=0, size=32)


def test_a_keypoint_mot_starts_from_a_pose_policys_perception_and_can_keep_it(demos, tmp_path):
    """``ws policy train --model mot --encoder keypoints --init POSE.pt`` starts both cameras' trunks and keypoint maps
    from the trained perception; with ``--freeze-vision`` they end training exactly as they started while the rest
    of the policy learns; mismatched sizes and a freeze with nothing to keep are refused."""
    from ws_cli.main import main

    _, _, path = demos
    pose = tmp_path / "pose.pt"
    common = ["policy", "train", "--demos", str(path), "--threads", "1", "--chunk", "4"]
    assert main([*common, "--model", "pose", "--steps", "5", "--perception-steps", "3", "--keypoints", "4",
                 "--trunk-width", "8", "--perception-batch-size", "4", "--out", str(pose)]) == 0
    perception = load_policy(pose)[0].perception
    mot = ["--model", "mot", "--encoder", "keypoints", "--keypoints", "4", "--trunk-width", "8", "--d-model", "32",
           "--layers", "1", "--batch-size", "4", "--steps", "3", "--init", str(pose)]
    for freeze, name in ((True, "frozen.pt"), (False, "tuned.pt")):
        assert main([*common, *mot, *(["--freeze-vision"] if freeze else []), "--out", str(tmp_path / name)]) == 0
        policy = load_policy(tmp_path / name)[0]
        for enc, ref in zip((policy.keypoint_encoder, policy.wrist_encoder), perception.encoders):
            for part in ("trunk", "softmax"):
                mine, theirs = getattr(enc, part).state_dict(), getattr(ref, part).state_dict()
                same = [torch.equal(mine[k], theirs[k]) for k in theirs]
                # frozen: exactly the perception's; fine-tuned: started there (3 steps moved it)
                assert all(same) if freeze else not all(same), (name, part)
                if not freeze:
                    assert max((mine[k] - theirs[k]).abs().max() for k in theirs) < 0.05
    wider = [*common, *mot, "--trunk-width", "16", "--out", str(tmp_path / "x.pt")]
    nothing = [*common, *mot[:-2], "--freeze-vision", "--out", str(tmp_path / "x.pt")]
    assert main(wider) == 2 and main(nothing) == 2
    assert not (tmp_path / "x.pt").exists()


def test_a_pose_policys_perception_trains_further_on_its_own_rollouts(demos, tmp_path):
    """``--model pose --init POSE.pt --perception-rollouts N``: the policy runs N episodes, every second frame it
    saw (labelled with the true object state) joins the perception's data, the perception continues from its weights
    and the actor is kept as it was."""
    from ws_cli.main import main
    from ws_policy.evaluate import evaluate_policy

    eps, _, path = demos
    first, second = tmp_path / "pose.pt", tmp_path / "pose_r1.pt"
    common = ["policy", "train", "--demos", str(path), "--threads", "1", "--chunk", "4", "--model", "pose",
              "--keypoints", "4", "--trunk-width", "8", "--perception-batch-size", "4"]
    assert main([*common, "--steps", "5", "--perception-steps", "3", "--out", str(first)]) == 0
    assert main([*common, "--init", str(first), "--perception-rollouts", "1", "--rollout-seed", "5",
                 "--perception-steps", "3", "--out", str(second)]) == 0
    before, after = load_policy(first)[0], load_policy(second)[0]
    hist = load_policy(second)[1]["extra"]["history"]
    assert hist["perception"]["rollouts"] == 1 and hist["perception"]["rollout_frames"] > 10
    assert hist["perception"]["rollout_seed"] == 5
    for a, b in zip(before.actor.state_dict().values(), after.actor.state_dict().values()):
        assert torch.equal(a, b)
    moved = [not torch.equal(a, b) for a, b in zip(before.perception.state_dict().values(),
                                                   after.perception.state_dict().values())]
    assert any(moved)
    # the recorded frames are what the policy saw, labelled with the simulator's object state
    frames = []
    report = evaluate_policy(PolicyRunner(before), "pick_place", 1, seed=7, size=32, chunk=4, latency=0, video=False,
                             record=frames, record_every=3)
    assert len(frames) == -(-report["episodes_detail"][0]["steps"] // 3)
    assert frames[0].rgb.shape == (1, 32, 32, 3) and frames[0].wrist_rgb.shape == (1, 32, 32, 3)
    assert frames[0].objects.shape == (1, 17) and frames[0].success
    assert main([*common, "--perception-rollouts", "1", "--perception-steps", "1", "--out", str(tmp_path / "x.pt")]) == 2
    assert main([*common, "--init", str(first), "--rollout-seed", "5", "--perception-steps", "1",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_a_pose_policy_gets_a_new_actor_trained_on_noisy_positions_over_its_kept_perception(demos, tmp_path):
    """``--model pose --init POSE.pt --retrain-actor --perception-steps 0 --actor-noise M``: the perception is
    kept exactly, a new actor is trained on positions perturbed by M metres (recorded in the history), and its
    chunk for a fixed input differs from an actor trained on exact positions with the same seed, as one
    perturbed only while the cube is lifted differs from one perturbed always; the flags' misuses are refused
    before anything is written."""
    from ws_cli.main import main

    eps, _, path = demos
    first = tmp_path / "pose.pt"
    common = ["policy", "train", "--demos", str(path), "--threads", "1", "--chunk", "4", "--model", "pose",
              "--keypoints", "4", "--trunk-width", "8", "--perception-batch-size", "4"]
    assert main([*common, "--steps", "5", "--perception-steps", "3", "--out", str(first)]) == 0
    outs = {}
    for noise in ("0", "0.02"):
        outs[noise] = tmp_path / f"noise{noise}.pt"
        assert main([*common, "--init", str(first), "--retrain-actor", "--perception-steps", "0", "--steps", "30",
                     "--actor-noise", noise, "--out", str(outs[noise])]) == 0
    before = load_policy(first)[0]
    clean, noisy = (load_policy(outs[n])[0] for n in ("0", "0.02"))
    hist = load_policy(outs["0.02"])[1]["extra"]["history"]
    assert hist["actor"]["input_noise_m"] == 0.02 and hist["perception"]["kept_from"] == str(first)
    for model in (clean, noisy):
        assert all(torch.equal(a, b) for a, b in zip(before.perception.state_dict().values(),
                                                     model.perception.state_dict().values()))
    feats = torch.zeros(1, 16)
    x = torch.zeros(1, 4, 7)
    tau = torch.full((1,), 0.5)
    assert not torch.allclose(clean.actor(feats, x, tau), noisy.actor(feats, x, tau))
    with pytest.raises(PolicyError, match="input_noise_m"):
        train_state_policy(StatePolicyConfig(chunk=4), eps, 1, input_noise_m=0.01)  # inputs="poses"
    with pytest.raises(PolicyError, match="input_noise_m"):
        train_state_policy(StatePolicyConfig(chunk=4, inputs="targets"), eps, 1, input_noise_m=-0.01)
    with pytest.raises(PolicyError, match="noise_when"):
        train_state_policy(StatePolicyConfig(chunk=4, inputs="targets"), eps, 1, input_noise_m=0.01,
                           noise_when="sometimes")
    with pytest.raises(PolicyError, match="noise_objects"):
        train_state_policy(StatePolicyConfig(chunk=4, inputs="targets"), eps, 1, input_noise_m=0.01,
                           noise_objects="target")
    lifted, _ = train_state_policy(StatePolicyConfig(chunk=4, inputs="targets"), eps, 30, input_noise_m=0.02,
                                   noise_when="lifted")
    everywhere, _ = train_state_policy(StatePolicyConfig(chunk=4, inputs="targets"), eps, 30, input_noise_m=0.02)
    assert not torch.allclose(lifted(feats, x, tau), everywhere(feats, x, tau))  # not every window perturbed
    x_pt = str(tmp_path / "x.pt")
    for bad in (["--retrain-actor", "--perception-steps", "1"],  # no --init
                ["--init", str(first), "--actor-noise", "0.01", "--perception-steps", "0"],  # actor kept
                ["--perception-steps", "0"],  # nothing to keep
                ["--init", str(first), "--retrain-actor", "--perception-steps", "0", "--actor-noise", "-1"],
                ["--init", str(first), "--perception-steps", "0", "--perception-layouts", "2"]):
        assert main([*common, *bad, "--steps", "1", "--out", x_pt]) == 2, bad
    assert main(["policy", "train", "--demos", str(path), "--threads", "1", "--model", "mot", "--actor-noise", "0.01",
                 "--steps", "1", "--out", x_pt]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_an_actor_trains_on_demonstrations_recorded_without_images(demos, tmp_path):
    """``ws policy collect --no-images`` records joints, object states and actions with empty images (the file's
    ``image_size`` 0); ``--model state`` trains on it, a pose policy's new actor trains on it (``--actor-demos``,
    recorded in the history) over the kept perception, and image models, a pose perception and misplaced
    ``--actor-demos`` are refused with the reason before anything is written."""
    from ws_cli.main import main
    from ws_policy.data import read_demos

    _, _, path = demos
    state_only = tmp_path / "state.hdf5"
    assert main(["policy", "collect", "--episodes", "2", "--no-images", "--stratified", "--seed", "7",
                 "--out", str(state_only)]) == 0
    eps, attrs = read_demos(state_only)
    assert attrs["image_size"] == 0 and not attrs["wrist"]
    assert all(e.rgb.shape == (len(e.actions) + 1, 0, 0, 3) and e.depth.shape == (len(e.actions) + 1, 0, 0)
               and e.objects.shape == (len(e.actions) + 1, 17) for e in eps)
    with pytest.raises(ValueError, match="not with images=False"):
        collect_demos("pick_place", 1, wrist=True, images=False)
    x_pt = tmp_path / "x.pt"
    assert main(["policy", "collect", "--episodes", "1", "--no-images", "--wrist", "--out", str(x_pt)]) == 2
    assert main(["policy", "train", "--demos", str(state_only), "--model", "state", "--steps", "3", "--threads", "1",
                 "--out", str(tmp_path / "state.pt")]) == 0
    common = ["policy", "train", "--threads", "1", "--chunk", "4", "--keypoints", "4", "--trunk-width", "8",
              "--perception-batch-size", "4"]
    first = tmp_path / "pose.pt"
    assert main([*common, "--demos", str(path), "--model", "pose", "--steps", "2", "--perception-steps", "2",
                 "--out", str(first)]) == 0
    out = tmp_path / "actor.pt"
    assert main([*common, "--demos", str(path), "--model", "pose", "--init", str(first), "--retrain-actor",
                 "--perception-steps", "0", "--actor-demos", str(state_only), "--steps", "5", "--out", str(out)]) == 0
    hist = load_policy(out)[1]["extra"]["history"]
    assert hist["actor"]["demos"] == str(state_only) and hist["perception"]["kept_from"] == str(first)
    same_data = tmp_path / "actor_same_data.pt"  # the same run on --demos: another actor, so the file was read
    assert main([*common, "--demos", str(path), "--model", "pose", "--init", str(first), "--retrain-actor",
                 "--perception-steps", "0", "--steps", "5", "--out", str(same_data)]) == 0
    a, b = load_policy(out)[0].actor.state_dict(), load_policy(same_data)[0].actor.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for bad in (["--demos", str(state_only), "--model", "mot"],  # images needed
                ["--demos", str(state_only), "--model", "pose"],  # the perception needs them
                ["--demos", str(path), "--model", "mot", "--actor-demos", str(state_only)],
                ["--demos", str(path), "--model", "pose", "--init", str(first), "--perception-steps", "0",
                 "--actor-demos", str(state_only)]):  # the init's actor is kept
        assert main([*common, *bad, "--steps", "1", "--out", str(x_pt)]) == 2, bad
    assert not x_pt.exists()


def test_the_shipped_pose_policy_places_and_reports_where_it_sees_the_target_while_carrying(tmp_path):
    """``ws policy eval`` of the shipped pick-and-place policy on a development seed it solves: the report gives
    the object head's target and cube errors while the cube is carried (per episode and by outcome), a few
    centimetres at most for a placement that succeeded."""
    import json

    from ws_cli.main import main

    out = tmp_path / "eval"
    assert main(["policy", "eval", "--checkpoint", "default", "--episodes", "1", "--seed", "3001", "--latency", "1",
                 "--no-video", "--threads", "1", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    ep = rep["episodes_detail"][0]
    assert ep["success"] and 0 < ep["carry_target_error_m"] < 0.03
    assert rep["carry_target_error_m"]["median_placed"] == rep["carry_target_error_m"]["median"] == ep["carry_target_error_m"]
    assert "median_not_placed" not in rep["carry_target_error_m"]
    assert 0 < ep["carry_cube_error_m"] == rep["carry_cube_error_m"]["median_placed"]
    assert rep["approach_cube_error_m"]["median_lifted"] == ep["approach_cube_error_m"] > 0
    assert "median_never_lifted" not in rep["approach_cube_error_m"]


def test_object_memory_keeps_the_target_and_the_resting_cube_until_the_estimate_lifts_it():
    """:class:`ObjectMemory`: the target is the mean of the first ``frames`` estimates for the whole episode; the
    cube (position and yaw) too, until an estimate puts it higher than resting plus ``lifted_m``, then the live
    estimate for good; ``reset`` forgets; bad settings and shapes are refused."""
    from ws_policy.perception import ObjectMemory
    from ws_policy.state_policy import CUBE_REST_Z_M, LIFTED_M

    def estimate(cube, target, yaw=0.1):
        o = np.zeros(17)
        o[0:3], o[3], o[6], o[14:17] = cube, np.cos(yaw / 2), np.sin(yaw / 2), target
        return torch.as_tensor(object_targets(o)[None])

    rest = CUBE_REST_Z_M
    a = estimate([0.30, 0.05, rest], [0.25, -0.10, 0.0], 0.1)
    b = estimate([0.32, 0.07, rest], [0.27, -0.12, 0.0], 0.3)
    mean_ab = (a + b) / 2
    mem = ObjectMemory(frames=2)
    assert torch.equal(mem(a), a)
    assert torch.allclose(mem(b), mean_ab)
    near = estimate([0.36, 0.01, rest + 0.5 * LIFTED_M], [0.20, 0.0, 0.0], 0.7)  # the arm hides the cube
    assert torch.allclose(mem(near), mean_ab)
    lifted = estimate([0.31, 0.06, rest + 2 * LIFTED_M], [0.20, 0.0, 0.0], 0.5)
    out = mem(lifted)
    assert torch.equal(out[:, [0, 1, 2, 6, 7]], lifted[:, [0, 1, 2, 6, 7]]) and mem.released
    assert torch.allclose(out[:, 3:6], mean_ab[:, 3:6])  # the target stays where it was seen first
    assert torch.equal(mem(near)[:, 0:3], near[:, 0:3])  # released for the rest of the episode
    mem.reset()
    assert mem.calls == 0 and not mem.released and torch.equal(mem(b), b)
    for bad in ({"frames": 0}, {"lifted_m": 0.0}):
        with pytest.raises(ValueError, match="frames >= 1 and lifted_m > 0"):
            ObjectMemory(**bad)
    with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
        mem(torch.zeros(2, 8))


def test_the_shipped_pose_policy_with_object_memory_acts_on_what_it_saw_first():
    """``PolicyRunner(object_memory=1)`` on the shipped pose policy: shown a second layout's images under the same
    instruction and joints, its chunk is the one a runner without memory gives for the first layout's images again (same
    sampler seed); a memoryless runner's differs. A new ChunkExecutor or its ``reset`` starts a new episode, and
    memory on a policy that is not a pose policy is refused."""
    from ws_policy.executor import ChunkExecutor
    from ws_policy.train import resolve_policy
    from ws_sim.piper_tasks import PiperManipEnv

    model, payload = load_policy(resolve_policy("default", "pick_place"))
    s = model.cfg.image_size
    env = PiperManipEnv("pick_place", render_mode="rgbd", width=s, height=s, wrist=True,
                        camera=payload["extra"].get("camera") or "task")
    try:
        first, _ = env.reset(seed=3001)
        other, _ = env.reset(seed=3002)
    finally:
        env.close()
    assert np.linalg.norm(first["objects"][:2] - other["objects"][:2]) > 0.05
    second = {**first, **{k: other[k] for k in ("rgb", "depth", "wrist_rgb", "wrist_depth")}}
    remembering, plain, live = (PolicyRunner(model, seed=0, object_memory=1), PolicyRunner(model, seed=0, object_memory=0),
                                PolicyRunner(model, seed=0, object_memory=0))
    remembering(first), plain(first), live(first)
    kept, again, seen = remembering(second), plain(first), live(second)
    assert np.allclose(kept, again, atol=1e-6)
    assert np.abs(seen - again).max() > 1e-3
    assert remembering.memory.calls == 2
    ChunkExecutor(remembering, chunk=model.cfg.chunk, replan_every=1)
    assert remembering.memory.calls == 0
    remembering(first)
    ex = ChunkExecutor(remembering, chunk=model.cfg.chunk, replan_every=1)
    remembering(first)
    ex.reset()
    assert remembering.memory.calls == 0
    from ws_policy.state_policy import StatePolicy

    with pytest.raises(ValueError, match="only for a pose policy"):
        PolicyRunner(StatePolicy(StatePolicyConfig(hidden=16, layers=1)), object_memory=2)
    with pytest.raises(ValueError, match="must be >= 0"):
        PolicyRunner(model, object_memory=-1)
