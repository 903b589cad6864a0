"""The policy's keypoint vision (ws_policy/vision.py) on the real PiPER scene rendered by MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws_policy.model import PolicyConfig, build_policy, default_vocabulary
from ws_policy.vision import KeypointEncoder, SpatialSoftmax, centre_crop, random_crop


def test_spatial_softmax_finds_a_bright_spot():
    """One hot pixel in a feature map: the keypoint sits at that pixel's centre, in [-1, 1] (x right, y down)."""
    ss = SpatialSoftmax(1, 1)
    with torch.no_grad():
        ss.maps.weight.fill_(1.0)
        ss.maps.bias.zero_()
        ss.log_temperature.fill_(-4.0)
    feat = torch.zeros(1, 1, 8, 16)
    feat[0, 0, 2, 11] = 1.0  # row 2 of 8, column 11 of 16
    with torch.no_grad():
        pos, att = ss(feat)
    np.testing.assert_allclose(pos[0, 0].numpy(), [(11.5 / 16) * 2 - 1, (2.5 / 8) * 2 - 1], atol=1e-3)
    assert att.shape == (1, 1, 8, 16) and float(att.sum()) == pytest.approx(1.0)


def test_crops_take_the_same_window_of_rgb_and_depth():
    rgb = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    depth = rgb[:, :1] * 10
    r, d, off = random_crop(rgb, depth, 6, generator=torch.Generator().manual_seed(0))
    for b in range(2):
        x, y = (int(v) for v in off[b])
        assert torch.equal(r[b], rgb[b, :, y:y + 6, x:x + 6]) and torch.equal(d[b], depth[b, :, y:y + 6, x:x + 6])
    r, _, off = centre_crop(rgb, depth, 6)
    assert torch.equal(r, rgb[..., 2:8, 2:8]) and off.tolist() == [[2.0, 2.0]] * 2
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(rgb, depth, 11)


def test_keypoints_back_project_to_the_cube_in_the_world_from_any_crop():
    """Render the PiPER scene; the cube's centre projected to a pixel, with the rendered depth there, back-projects
    (KeypointEncoder.back_project) onto the cube's visible face, whichever crop holds the pixel."""
    from ws_sim.piper_tasks import PiperManipEnv

    size = 64
    env = PiperManipEnv("pick_place", render_mode="rgbd", width=size, height=size, camera="task")
    obs, _ = env.reset(seed=3)
    cam = env.model.camera("task").id
    c, rot = env.data.cam_xpos[cam], env.data.cam_xmat[cam].reshape(3, 3)
    cube = obs["objects"][:3]
    p_cam = rot.T @ (cube - c)  # MuJoCo's camera looks along its -z, y up
    enc = KeypointEncoder(32, size, float(env.model.cam_fovy[cam]))
    u = size / 2 + enc.focal * p_cam[0] / -p_cam[2]
    v = size / 2 - enc.focal * p_cam[1] / -p_cam[2]
    z = float(obs["depth"][int(v), int(u)])
    points = []
    for crop, off in ((56, (0.0, 0.0)), (56, (8.0, 8.0)), (48, (5.0, 3.0))):
        pos = torch.tensor([[[(u - off[0]) / crop * 2 - 1, (v - off[1]) / crop * 2 - 1]]], dtype=torch.float64)
        pts, full = enc.back_project(pos, torch.tensor([[z]], dtype=torch.float64), torch.tensor([off], dtype=torch.float64),
                                     crop)
        np.testing.assert_allclose(full[0, 0].numpy(), [u / size * 2 - 1, v / size * 2 - 1], atol=1e-9)
        x, y, zz = pts[0, 0].numpy()
        points.append(c + rot @ np.array([x, y, -zz]))
    np.testing.assert_allclose(points[0], points[1], atol=1e-9)
    np.testing.assert_allclose(points[0], points[2], atol=1e-9)
    half = 0.02  # the cube's half size is 0.02 m or less: the surface point is within its half diagonal
    assert np.linalg.norm(points[0] - cube) < half * np.sqrt(3) + 0.01, (points[0], cube)
    env.close()


def test_the_keypoint_policy_crops_at_random_in_training_and_at_the_centre_at_inference():
    cfg = PolicyConfig(mode="action_only", encoder="keypoints", crop=56, keypoints=8, d_model=32, heads=2, layers=1,
                       vocab=tuple(default_vocabulary()))
    net = build_policy(cfg)
    assert net.n_cur == 8
    b = 4
    args = (torch.rand(b, 3, 64, 64) * 2 - 1, torch.rand(b, 1, 64, 64) + 0.3, torch.zeros(b, 8),
            torch.zeros(b, cfg.max_words, dtype=torch.long), torch.full((b,), 0.5))
    acts = torch.zeros(b, cfg.chunk, 7)
    net.eval()
    with torch.no_grad():
        a1, a2 = (net(*args, actions=acts)["actions"] for _ in range(2))
    torch.testing.assert_close(a1, a2)
    net.train()
    torch.manual_seed(0)
    with torch.no_grad():
        t1, t2 = (net(*args, actions=acts)["actions"] for _ in range(2))
    assert not torch.allclose(t1, t2)  # another crop each time
    for bad, msg in (({"crop": 70}, "crop must be"), ({"encoder": "pixels"}, "encoder must be"),
                     ({"encoder": "patch", "crop": 56}, "random crops")):
        with pytest.raises(ValueError, match=msg):
            PolicyConfig(**{"encoder": "keypoints", **bad})


def test_keypoints_learn_where_the_cube_is_across_the_whole_band():
    """800 steps of regression from rendered frames (the cube anywhere in the full workspace, any yaw, lights and
    table randomised) to the cube's table position, on random crops: on held-out frames (centre crop) the
    keypoint encoder's error ends far below guessing the mean position. Frames with the distractor cube are left
    out: from the image alone it is ambiguous which cube is meant (the policy reads the instruction for that)."""
    from ws_sim.piper_tasks import PiperManipEnv

    env = PiperManipEnv("pick_place", render_mode="rgbd", width=64, height=64, camera="task", workspace="full")
    frames = [f for f in (env.reset(seed=s)[0] for s in range(560)) if f["objects"][7] < -0.5]  # cube B parked
    env.close()
    rgb = torch.as_tensor(np.stack([f["rgb"] for f in frames]), dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
    depth = torch.as_tensor(np.stack([f["depth"] for f in frames]), dtype=torch.float32)[:, None]
    xy = torch.as_tensor(np.stack([f["objects"][:2] for f in frames]), dtype=torch.float32)
    n = len(frames) - 50
    assert n > 150
    mean, std = xy[:n].mean(0), xy[:n].std(0)
    target = (xy - mean) / std
    torch.manual_seed(0)
    enc = KeypointEncoder(32, 64, 45.0, keypoints=8, width=8, blocks=1)
    head = torch.nn.Linear(2 * 8 * 32, 2)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(800):
        i = torch.randint(0, n, (32,), generator=gen)
        r, d, off = random_crop(rgb[i], depth[i], 56, generator=gen)
        v, dt, _ = enc(r, d, off)
        loss = (head(torch.cat([v, dt], -1).flatten(1)) - target[i]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        r, d, off = centre_crop(rgb[n:], depth[n:], 56)
        v, dt, _ = enc(r, d, off)
        err = ((head(torch.cat([v, dt], -1).flatten(1)) - target[n:]) * std).norm(dim=-1).mean()
    baseline = (xy[n:] - mean).norm(dim=-1).mean()
    assert float(err) < 0.35 * float(baseline), (float(err), float(baseline))


def test_a_wrist_camera_policy_from_recording_to_evaluation(tmp_path, capsys):
    """'ws policy collect --wrist' records both cameras; a keypoint policy trained on them reads both (one encoder
    each), is evaluated closed loop with both, and names the missing camera when an observation lacks it."""
    import json

    from ws_cli.main import main
    from ws_policy.data import read_demos
    from ws_policy.model import PolicyInputError
    from ws_policy.train import PolicyRunner, load_policy

    demos = tmp_path / "d.hdf5"
    assert main(["policy", "collect", "--task", "push", "--episodes", "2", "--size", "32", "--workspace", "narrow",
                 "--wrist", "--out", str(demos)]) == 0
    eps, attrs = read_demos(demos)
    assert attrs["wrist"] and attrs["wrist_fovy"] == 75.0
    assert eps[0].wrist_rgb.shape == eps[0].rgb.shape and eps[0].wrist_depth.shape == eps[0].depth.shape
    assert not np.array_equal(eps[0].wrist_rgb[0], eps[0].rgb[0])
    ckpt = tmp_path / "w.pt"
    assert main(["policy", "train", "--demos", str(demos), "--model", "action_only", "--encoder", "keypoints",
                 "--steps", "2", "--batch-size", "4", "--d-model", "32", "--layers", "1", "--chunk", "4",
                 "--threads", "1", "--out", str(ckpt)]) == 0
    net, _ = load_policy(ckpt)
    assert net.cfg.wrist and net.cfg.wrist_fov_y_deg == 75.0 and net.n_cur == 2 * net.cfg.keypoints
    out = tmp_path / "eval"
    assert main(["policy", "eval", "--checkpoint", str(ckpt), "--task", "push", "--episodes", "1", "--no-video",
                 "--threads", "1", "--out", str(out), "--demos", str(demos), "--latency", "1"]) == 0
    assert json.loads((out / "report.json").read_text())["episodes"] == 1
    obs = {"rgb": eps[0].rgb[0], "depth": eps[0].depth[0].astype(np.float32), "qpos": eps[0].qpos[0],
           "instruction": eps[0].instruction}
    with pytest.raises(PolicyInputError, match="wrist_rgb"):
        PolicyRunner(net)(obs)
    obs.update(wrist_rgb=eps[0].wrist_rgb[0], wrist_depth=eps[0].wrist_depth[0].astype(np.float32))
    assert PolicyRunner(net)(obs).shape == (4, 7)
