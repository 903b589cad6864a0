"""The video world model's data and experiments (issue 9): clips of the three control kinds from
real MuJoCo, the mixture / dense / per-kind training, Worldscape-MoE Tuning, held-out scores and
the long-rollout drift measurement, at toy size."""

import h5py
import numpy as np
import pytest
import torch

from ws_worldmodel.video.clips import (CONTROL_DIMS, camera_controls, collect_clips, frames_tensor, go1_walk_episode,
                                       read_clips, write_clips)
from ws_worldmodel.video.experts import detail_ratio, drift, evaluate, load, random_chunks, train


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A small file with all three kinds: 16 px, 6-frame clips, a few episodes each."""
    path = tmp_path_factory.mktemp("clips") / "clips.hdf5"
    sets = [collect_clips(k, 4, frames=6, stride=6, size=16, walk_frames=24, progress=False)
            for k in ("camera", "joints", "keypoints")]
    write_clips(path, sets)
    return path


def test_the_go1_camera_controls_are_its_motion_and_compose_back_to_its_poses():
    ep = go1_walk_episode(20, 16, seed=3)
    assert ep["rgb"].shape == (20, 16, 16, 3) and ep["depth"].shape == (20, 16, 16)
    assert ep["rgb"].std(axis=0).mean() > 1.0  # the picture changes as it walks
    poses = ep["poses"].astype(np.float64)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    assert 0.02 < steps.mean() < 0.1  # 0.3-0.8 m/s at 10 Hz
    pose = poses[0].copy()
    for c in ep["controls"][1:]:  # chain the per-frame motions from the first pose
        rel = np.eye(4)
        a, b = c[3:6], c[6:9]
        rel[:3, :3] = np.stack([a, b, np.cross(a, b)], 1)
        rel[:3, 3] = c[:3]
        pose = pose @ rel
    np.testing.assert_allclose(pose, poses[-1], atol=1e-4)
    # the same motion anywhere in the world gives the same control
    shifted = poses.copy()
    shifted[:, :3, 3] += [5.0, -2.0, 0.0]
    np.testing.assert_allclose(camera_controls(shifted), ep["controls"], atol=1e-5)


def test_clips_hold_each_kind_with_its_controls_and_split_by_episode(clip_file):
    data = read_clips(clip_file)
    assert set(data) == {"camera", "joints", "keypoints"}
    for kind, s in data.items():
        assert s.controls.shape[2] == CONTROL_DIMS[kind] and s.rgb.shape[1:] == (6, 16, 16, 3)
        assert np.isfinite(s.controls).all() and (s.depth <= s.max_depth).all()
        train, test = s.split(0.25)
        assert len(train) + len(test) == len(s)
        assert not set(train.episode) & set(test.episode)
        x = frames_tensor(s.rgb[:2], s.depth[:2], s.max_depth)
        assert x.shape == (2, 6, 4, 16, 16) and x.min() >= -1 and x.max() <= 1
    kp = data["keypoints"].controls.reshape(-1, 6)
    gap = np.linalg.norm(kp[:, :3] - kp[:, 3:], axis=1)  # the fingers: parallel, 0-7 cm apart
    assert gap.min() > 0.005 and gap.max() < 0.1 and gap.max() - gap.min() > 0.01  # the gripper opens and closes
    # joints: the command that led to each frame; an episode's first frame repeats its first command
    j = data["joints"]
    first = np.r_[True, j.episode[1:] != j.episode[:-1]]
    np.testing.assert_array_equal(j.controls[first, 0], j.controls[first, 1])
    assert j.controls[..., -1].min() >= 0 and j.controls[..., -1].max() <= 0.036  # the gripper column, m


def test_rewriting_a_kind_keeps_the_others_and_a_failed_write_loses_nothing(clip_file, tmp_path):
    path = tmp_path / "c.hdf5"
    data = read_clips(clip_file)
    write_clips(path, [data["camera"], data["joints"]])
    write_clips(path, [data["keypoints"]])
    assert set(read_clips(path)) == {"camera", "joints", "keypoints"}
    before = path.read_bytes()
    bad = data["joints"].subset(slice(None))
    bad.rgb = bad.rgb.astype(object)  # h5py cannot store this
    with pytest.raises(TypeError):
        write_clips(path, [bad])
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    with h5py.File(tmp_path / "junk.hdf5", "w") as f:
        f.create_group("camera")
    with pytest.raises(ValueError, match="not a clip set"):
        read_clips(tmp_path / "junk.hdf5")
    with pytest.raises(ValueError, match="unknown control kind"):
        collect_clips("hands", 1)


def test_random_chunks_cover_the_frames():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        lengths = random_chunks(rng, n, 4)
        assert sum(lengths) == n and all(1 <= x <= 4 for x in lengths)


def test_detail_ratio_is_one_for_the_data_below_for_blur_and_above_for_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 16, 16, generator=g) * 2 - 1
    assert detail_ratio(x, x) == pytest.approx(1.0)
    blur = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 3, 1, 1).view_as(x)
    assert detail_ratio(blur, x) < 0.5
    assert detail_ratio(x + 0.5 * torch.randn(x.shape, generator=g), x) > 1.2
    flat = x.clone()
    flat[:, :, :3] = 0.3  # only the RGB counts: the depth channel keeps its detail here
    assert detail_ratio(flat, x) == 0.0


def test_mixture_dense_and_per_kind_train_and_score_on_held_out_clips(clip_file, tmp_path):
    kw = dict(steps=3, batch=4, d_model=32, layers=1, heads=2, patch=8, progress=False)
    s_mix = train(clip_file, "mixture", tmp_path / "mix.pt", **kw)
    train(clip_file, "dense", tmp_path / "dense.pt", **kw)
    train(clip_file, "per-kind", tmp_path / "cam.pt", kinds=("camera",), **kw)
    mix, _ = load(tmp_path / "mix.pt")
    dense, _ = load(tmp_path / "dense.pt")
    # the same parameters per sample: the shared expert and one kind expert against one double-width
    # feed-forward (the second output bias of the pair is the only difference, d_model a block)
    per_sample = lambda m, n_experts: sum(p.numel() for p in m.parameters()) - sum(  # noqa: E731
        p.numel() for b in m.blocks for e in list(b.ffn.experts)[:n_experts] for p in e.parameters())
    assert per_sample(mix, 2) - per_sample(dense, 0) == 1 * 32
    assert s_mix["trained_parameters"] == s_mix["parameters"]
    (tmp_path / "mix2.pt").write_bytes((tmp_path / "mix.pt").read_bytes())
    res = evaluate(clip_file, [tmp_path / "mix.pt", tmp_path / "dense.pt", tmp_path / "cam.pt", tmp_path / "mix2.pt"],
                   clips_per_kind=2)
    assert set(res) == {"camera", "joints", "keypoints"}
    assert set(res["camera"]) == {"mixture", "dense", "per-kind", "hold-last-frame", "mixture (mix2)"}
    assert res["joints"]["mixture (mix2)"]["flow"] == res["joints"]["mixture"]["flow"]  # the same weights and noise
    del res["camera"]["mixture (mix2)"], res["joints"]["mixture (mix2)"], res["keypoints"]["mixture (mix2)"]
    assert set(res["joints"]) == {"mixture", "dense", "hold-last-frame"}
    for name, r in res["camera"].items():
        if name == "hold-last-frame":
            continue
        assert np.isfinite([r["flow"], r["rollout"], r["detail"]]).all() and r["rollout"] > 0 and r["detail"] > 0
    with pytest.raises(ValueError, match="one kind"):
        train(clip_file, "per-kind", tmp_path / "x.pt", kinds=("camera", "joints"), **kw)
    assert not (tmp_path / "x.pt").exists()


def test_moe_tuning_adds_a_kind_and_leaves_the_other_kinds_experts_alone(clip_file, tmp_path):
    kw = dict(batch=4, d_model=32, layers=1, heads=2, patch=8, progress=False)
    train(clip_file, "mixture", tmp_path / "two.pt", kinds=("camera", "joints"), steps=2, **kw)
    summary = train(clip_file, "mixture", tmp_path / "three.pt", steps=3, init=str(tmp_path / "two.pt"),
                    add_kind="keypoints", **kw)
    assert summary["trained_parameters"] < summary["parameters"]
    two, _ = load(tmp_path / "two.pt")
    three, _ = load(tmp_path / "three.pt")
    assert three.cfg.control_kinds == ("camera", "joints", "keypoints")
    for b2, b3 in zip(two.blocks, three.blocks):
        for k in (0, 1):  # the old kinds' experts are frozen
            for p2, p3 in zip(b2.ffn.experts[k].parameters(), b3.ffn.experts[k].parameters()):
                assert torch.equal(p2, p3)
        assert not all(torch.equal(p2, p3) for p2, p3 in zip(b2.ffn.shared.parameters(), b3.ffn.shared.parameters()))


def test_drift_measures_long_rollouts_and_the_memory_stays_bounded(tmp_path):
    long = tmp_path / "long.hdf5"
    write_clips(long, [collect_clips("joints", 2, frames=40, stride=1000, size=16, seed=7, progress=False)])
    clips = tmp_path / "clips.hdf5"
    write_clips(clips, [collect_clips("joints", 2, frames=6, stride=6, size=16, progress=False)])
    train(clips, "per-kind", tmp_path / "j.pt", kinds=("joints",), steps=2, batch=2, d_model=32, layers=1, heads=2,
          patch=8, progress=False)
    res = drift(long, tmp_path / "j.pt", "joints", episodes=2, plot=str(tmp_path / "drift.png"))
    assert res["frames"] == 40 and (tmp_path / "drift.png").stat().st_size > 0
    assert res["fixed_full_cache"]["cache_frames_at_end"] == 40
    assert res["action_guided_memory"]["cache_frames_at_end"] <= 2 + 6 + 8  # anchors + window + pool
    for name in ("fixed_full_cache", "fixed_memory", "action_guided_memory"):
        assert len(res[name]["curve"]) == 38 and np.isfinite(res[name]["growth"])


def test_a_go1_look_around_turns_away_and_comes_back_to_the_same_view():
    from ws_worldmodel.video.clips import look_yaw

    yaw = look_yaw(12, 2, 4, 0.25)
    np.testing.assert_allclose(yaw, 0.25 * np.array([0, 0, 0, 1, 2, 3, 4, 3, 2, 1, 0, 0]))
    ep = go1_walk_episode(12, 16, seed=4, look=(2, 4, 0.25))
    p = ep["poses"].astype(np.float64)
    heading = np.unwrap(np.arctan2(p[:, 1, 0], p[:, 0, 0]))  # the camera's x axis in the ground plane
    np.testing.assert_allclose(heading - heading[0], yaw, atol=0.05)  # the gait's sway, no more
    np.testing.assert_allclose(p[10, :3, 3], p[0, :3, 3], atol=0.01)  # back where it looked from
    assert np.abs(ep["rgb"][6].astype(float) - ep["rgb"][0]).mean() > 5  # it looked elsewhere on the way
    # collected with a share of look-arounds: some episodes only turn, others walk
    s = collect_clips("camera", 4, frames=8, stride=100, size=16, walk_frames=8, look_share=0.5, seed=1,
                      progress=False)
    travel = np.linalg.norm(s.poses[:, -1, :2, 3] - s.poses[:, 0, :2, 3], axis=1)
    assert (travel < 0.3).any() and (travel > 0.3).any()
    with pytest.raises(ValueError, match="look_share"):
        collect_clips("camera", 1, look_share=1.5)
    with pytest.raises(ValueError, match="look-arounds"):
        collect_clips("joints", 1, look_share=0.5)


def test_the_go1_revisit_test_scores_the_returning_frames_with_and_without_memory(clip_file, tmp_path):
    from ws_worldmodel.video.experts import revisit

    clips = tmp_path / "look.hdf5"
    write_clips(clips, [collect_clips("camera", 3, frames=12, stride=100, size=16, walk_frames=12, look_share=1.0,
                                      progress=False)])
    train(clips, "per-kind", tmp_path / "c.pt", kinds=("camera",), steps=2, batch=2, d_model=32, layers=1, heads=2,
          patch=8, progress=False)
    mem = dict(window=2, pool=4, retrieve=1)
    res = revisit(tmp_path / "c.pt", episodes=2, out=4, rate=0.3, **mem)
    assert res["frames"] == 2 + 8 + 2 and res["window_only_frames"] == 5 and res["scored_frames_per_episode"] >= 2
    for k in ("memory", "window_only", "hold_first_frame"):
        assert np.isfinite(res[k]["mse"]) and res[k]["mse"] > 0
    assert res["memory_config"]["window"] == 2
    assert 0 <= res["memory_better_in"] <= 2
    with pytest.raises(ValueError, match="outlast"):
        revisit(tmp_path / "c.pt", episodes=1, out=2, **mem)
    train(clip_file, "per-kind", tmp_path / "j.pt", kinds=("joints",), steps=1, batch=2, d_model=32, layers=1,
          heads=2, patch=8, progress=False)
    with pytest.raises(ValueError, match="camera kind"):
        revisit(tmp_path / "j.pt", episodes=1, out=4, **mem)


def test_self_forcing_distillation_trains_the_student_on_its_own_rollouts(clip_file, tmp_path):
    from ws_worldmodel.video.distill import distill, dmd_loss, student_rollout

    kw = dict(steps=2, batch=2, d_model=32, layers=1, heads=2, patch=8, progress=False, kinds=("camera", "joints"))
    train(clip_file, "mixture", tmp_path / "teacher.pt", causal=False, **kw)
    train(clip_file, "mixture", tmp_path / "student.pt", **kw)
    student, ck = load(tmp_path / "student.pt")
    teacher, _ = load(tmp_path / "teacher.pt")
    x = frames_tensor(*[np.asarray(a) for a in (read_clips(clip_file)["camera"].rgb[:2],
                                                 read_clips(clip_file)["camera"].depth[:2])], 6.0)
    ctrl = torch.randn(2, 6, 9)
    gen = student_rollout(student.train(), x[:, :2], ctrl, 0, 6, steps=3, rng=np.random.default_rng(0))
    assert gen.shape == x.shape and torch.equal(gen[:, :2], x[:, :2]) and gen.requires_grad
    # DMD against a critic that models the data as the teacher does: no direction, no gradient
    gen = gen.detach().requires_grad_(True)
    dmd_loss(gen, ctrl, 0, teacher, teacher, context=2).backward()
    assert gen.grad.abs().max() == 0
    critic = load(tmp_path / "teacher.pt")[0]
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen.grad = None
    dmd_loss(gen, ctrl, 0, teacher, critic, context=2).backward()
    assert gen.grad[:, 2:].abs().max() > 0 and gen.grad[:, :2].abs().max() == 0  # only generated frames move
    summary = distill(clip_file, tmp_path / "teacher.pt", tmp_path / "student.pt", tmp_path / "d.pt", iters=2,
                      batch=2, steps=2, progress=False)
    assert np.isfinite(summary["dmd_last_20"])
    distilled, dck = load(tmp_path / "d.pt")
    assert dck["distilled"] and any(not torch.equal(a, b) for a, b in zip(distilled.parameters(), student.parameters()))
    res = evaluate(clip_file, [tmp_path / "teacher.pt", tmp_path / "d.pt"], clips_per_kind=1, steps=2)
    assert set(res["camera"]) == {"mixture+teacher", "mixture+distilled", "hold-last-frame"}
    with pytest.raises(ValueError, match="bidirectional"):
        distill(clip_file, tmp_path / "student.pt", tmp_path / "student.pt", tmp_path / "e.pt", iters=1)
    assert not (tmp_path / "e.pt").exists()
