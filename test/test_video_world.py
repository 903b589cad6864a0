"""The video world model's parts (issue 9): the memory-aware KV cache's policies and the
chunk-causal diffusion transformer with heterogeneous control experts."""

import numpy as np
import pytest
import torch

from ws_worldmodel.video import (MemoryConfig, MemoryKVCache, VideoDiT, VideoDiTConfig, generate_bidirectional,
                                 generate_chunked)
from ws_worldmodel.video.memory import farthest_point_order, pose_distance


def _yaw(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# --- the memory ---------------------------------------------------------------------------------
def test_anchors_stay_and_the_cache_stays_bounded_over_a_long_rollout():
    cfg = MemoryConfig(anchors=2, window=4, pool=5, retrieve=2, dedup_threshold=0.0)
    mem = MemoryKVCache(cfg)
    rng = np.random.default_rng(0)
    for i in range(300):
        mem.add(payload=i, position=rng.uniform(-5, 5, 3), rotation=_yaw(rng.uniform(-3, 3)))
        assert len(mem) <= cfg.max_stored
        ctx = mem.context(rng.uniform(-5, 5, 3))
        assert len(ctx) <= cfg.max_attended
        assert [e.index for e in ctx] == sorted(e.index for e in ctx)
        if i >= 1:
            assert [e.payload for e in ctx[:2]] == [0, 1]  # the anchors, in every context
    assert [e.payload for e in mem.window] == [296, 297, 298, 299]  # the last frames, in order
    assert len(mem.pool) == 5 and mem.stats["evicted"] == 300 - 2 - 4 - 5


def test_the_pool_evicts_the_viewpoint_the_others_already_cover():
    # poses on a line 1 m apart, one more 5 cm from the third: that near-duplicate viewpoint (or
    # its twin) is the one farthest-point sampling lets go
    cfg = MemoryConfig(anchors=1, window=1, pool=4, retrieve=1, dedup_threshold=0.0)
    mem = MemoryKVCache(cfg)
    for x in [0.0, 1.0, 2.0, 3.0, 3.05, 4.0, 9.0]:
        mem.add(payload=x, position=[x, 0, 0])
    # pool candidates: 1, 2, 3, 3.05, 4 (9 is in the window); 0 is the anchor
    assert len(mem.evicted) == 1 and mem.evicted[0] in (3, 4)  # frame 3 (x=3.0) or 4 (x=3.05)
    assert sorted(e.payload for e in mem.pool) in ([1.0, 2.0, 3.05, 4.0], [1.0, 2.0, 3.0, 4.0])


def test_farthest_point_order_and_pose_distance():
    pts = np.array([0.0, 1.0, 0.1, 5.0])
    d = np.abs(pts[:, None] - pts[None])
    assert farthest_point_order(d, 0) == [0, 3, 1, 2]
    assert pose_distance(np.zeros(3), np.eye(3), np.zeros(3), _yaw(np.pi / 2), rot_scale_m=0.5) == \
        pytest.approx(0.5 * np.pi / 2)


def test_gated_deduplication_drops_what_memory_already_explains():
    cfg = MemoryConfig(anchors=1, window=1, pool=8, retrieve=2, dedup_threshold=0.05)
    mem = MemoryKVCache(cfg)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=64), rng.normal(size=64)
    mem.add(0, [0, 0, 0], descriptor=a)         # anchor
    mem.add(1, [1, 0, 0], descriptor=b)         # window
    mem.add(2, [2, 0, 0], descriptor=2 * a)     # pushes 1 (novel) into the pool
    mem.add(3, [0, 0, 0], descriptor=a)         # pushes 2: a scaled copy of the anchor: redundant
    mem.add(4, [3, 0, 0], descriptor=a + 0.5 * b)  # pushes 3: the same view as the anchor: redundant
    mem.add(5, [4, 0, 0], descriptor=rng.normal(size=64))  # pushes 4: a mix of remembered ones: redundant
    mem.add(6, [5, 0, 0], descriptor=rng.normal(size=64))  # pushes 5: new content: admitted
    assert [e.payload for e in mem.pool] == [1, 5]
    assert mem.stats["deduplicated"] == 3


def test_retrieval_ranks_the_pool_by_camera_pose():
    cfg = MemoryConfig(anchors=0, window=1, pool=10, retrieve=2, dedup_threshold=0.0)
    mem = MemoryKVCache(cfg)
    for i, (x, yaw) in enumerate([(0, 0), (1, 0), (2, 0), (0, np.pi), (5, 0), (9, 0)]):
        mem.add(i, [x, 0, 0], _yaw(yaw))
    got = [e.payload for e in mem.retrieve([0.1, 0, 0], _yaw(0.0))]
    assert got == [0, 1]  # same place and heading first; the reversed view at x=0 is farther
    s = mem.similarity([0.1, 0, 0], _yaw(0.0))
    assert s.shape == (5,) and s[0] == s.max()


def test_memory_config_and_pose_errors():
    with pytest.raises(ValueError, match="retrieve"):
        MemoryConfig(pool=2, retrieve=3)
    with pytest.raises(ValueError, match="window"):
        MemoryConfig(window=0)
    with pytest.raises(ValueError, match="camera pose"):
        MemoryKVCache().add(0, [0, 0])
    with pytest.raises(ValueError, match="camera pose"):
        MemoryKVCache().add(0, [0, 0, np.nan])


# --- the transformer ------------------------------------------------------------------------------
def _model(**kw):
    torch.manual_seed(0)
    cfg = VideoDiTConfig(image_size=16, patch=8, d_model=32, layers=2, heads=2, chunk=2, **kw)
    m = VideoDiT(cfg)
    for p in m.parameters():  # adaLN-zero starts as the identity; perturb so every path is live
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    return m.eval()


def _inputs(b=2, f=6, kind=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, f, 4, 16, 16, generator=g)
    tau = torch.rand(b, f, generator=g)
    ctrl = torch.randn(b, f, 9, generator=g)
    return x, tau, ctrl, torch.full((b,), kind)


@pytest.mark.parametrize("chunk_experts", [0, 3])
def test_attention_is_causal_across_chunks_and_bidirectional_within(chunk_experts):
    m = _model(chunk_experts=chunk_experts)
    x, tau, ctrl, kind = _inputs()
    base = m(x, tau, ctrl, kind, context=2)  # chunks: frames 0-1 | 2-3 | 4-5
    later = x.clone()
    later[:, 4] += 1.0  # change a frame of the last chunk
    out = m(later, tau, ctrl, kind, context=2)
    assert torch.allclose(out[:, :4], base[:, :4], atol=1e-6)  # earlier chunks cannot see it
    assert not torch.allclose(out[:, 5], base[:, 5], atol=1e-4)  # its own chunk does
    teacher = m(later, tau, ctrl, kind, causal=False)
    assert not torch.allclose(teacher[:, 0], m(x, tau, ctrl, kind, causal=False)[:, 0], atol=1e-4)


@pytest.mark.parametrize("chunk_experts", [0, 3])
def test_the_kv_cache_gives_what_the_whole_sequence_gives(chunk_experts):
    m = _model(chunk_experts=chunk_experts)
    x, tau, ctrl, kind = _inputs()
    tau[:, :4] = 1.0  # earlier chunks clean, as in generation
    full = m(x, tau, ctrl, kind, context=2)
    _, kv = m(x[:, :4], tau[:, :4], ctrl[:, :4], kind, context=2, return_kv=True)
    last = m(x[:, 4:], tau[:, 4:], ctrl[:, 4:], kind, first_frame=4, past=kv, context=2)
    assert torch.allclose(last, full[:, 4:], atol=1e-5)


def test_per_chunk_experts_route_whole_chunks_by_their_content_and_length():
    m = _model(chunk_experts=3)
    x, tau, ctrl, kind = _inputs(b=8, f=9)
    chunks = torch.tensor([0, 0, 1, 1, 1, 1, 2, 3, 3])  # lengths 2, 4, 1, 2
    m(x, tau, ctrl, kind, chunks=chunks)
    router = m.blocks[0].chunk_ffn
    assert router.last_route.shape == (8, 4)  # one expert per chunk, not per token
    assert len(torch.unique(router.last_route)) > 1  # different chunks go to different experts
    # a chunk's tokens all take its expert: swapping that expert's weights changes only those frames
    route = router.last_route
    e = int(route[0, 1])
    base = m(x, tau, ctrl, kind, chunks=chunks)
    with torch.no_grad():
        router.experts[e][2].bias.add_(1.0)
    out = m(x, tau, ctrl, kind, chunks=chunks)
    changed = ~torch.isclose(out, base, atol=1e-6).flatten(2).all(-1)  # (B, F)
    want = (route[:, chunks] == e)  # frames of chunks routed to e (in this layer; later layers follow)
    assert changed[want].all()
    # other cuts of the same frames: one route per chunk again
    m(x, tau, ctrl, kind, chunks=torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1]))
    assert router.last_route.shape == (8, 2)
    # training: the loss carries the load-balancing term (E * sum f P >= 1, equal to 1 when balanced)
    m.train()
    loss, parts = m.loss(x, ctrl, kind, context=2)
    assert parts["balance"] >= 1.0 - 1e-6 and torch.isfinite(loss)
    loss.backward()
    assert router.router.weight.grad is not None and router.router.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="chunk_experts"):
        VideoDiTConfig(chunk_experts=1)


def test_the_clean_frame_prediction_gives_a_velocity_that_lands_on_it():
    import dataclasses

    m = _model()
    assert m.cfg.prediction == "clean"
    raw = VideoDiT(dataclasses.replace(m.cfg, prediction="velocity")).eval()  # same weights, the raw output
    raw.load_state_dict(m.state_dict())
    x, tau, ctrl, kind = _inputs()
    tau[:, :3] = tau[:, :3].clamp(max=0.9)
    tau[:, 3:] = 0.99  # inside the clip: the velocity divides by tau_clip, not by 0.01
    v, pred = m(x, tau, ctrl, kind), raw(x, tau, ctrl, kind)
    gap = (1 - tau).clamp(min=m.cfg.tau_clip)[:, :, None, None, None]
    assert torch.allclose(x + gap * v, pred, atol=1e-5)  # one Euler jump lands on the predicted frame
    with pytest.raises(ValueError, match="prediction"):
        VideoDiTConfig(prediction="noise")
    with pytest.raises(ValueError, match="tau_clip"):
        VideoDiTConfig(tau_clip=0.0)


def test_a_residual_model_changes_the_last_frame_and_keeps_causality_and_the_cache():
    from ws_worldmodel.video.dit import chunk_ids

    m = _model(residual=True)
    x, tau, ctrl, kind = _inputs()
    chunks = chunk_ids(2, [2, 2])  # 0 0 | 1 1 | 2 2
    base = m.base_frames(x, 2, chunks)
    assert torch.equal(base[:, 2], x[:, 1]) and torch.equal(base[:, 3], x[:, 1])  # the last given frame
    assert torch.equal(base[:, 4], x[:, 3]) and torch.equal(base[:, 5], x[:, 3])  # the previous chunk's last
    assert torch.equal(base[:, :2], x[:, :2])
    assert torch.equal(m.base_frames(x, 2, causal=False)[:, 0], x[:, 1])
    # causality holds with the bases: they come from earlier chunks
    ref = m(x, tau, ctrl, kind, chunks=chunks, base=base)
    later = x.clone()
    later[:, 4] += 1.0
    out = m(later, tau, ctrl, kind, chunks=chunks, base=m.base_frames(later, 2, chunks))
    assert torch.allclose(out[:, :4], ref[:, :4], atol=1e-6) and not torch.allclose(out[:, 5], ref[:, 5], atol=1e-4)
    # the cached last chunk gives what the whole sequence gives
    tau[:, :4] = 1.0
    full = m(x, tau, ctrl, kind, context=2, base=m.base_frames(x, 2))
    _, kv = m(x[:, :4], tau[:, :4], ctrl[:, :4], kind, context=2, return_kv=True, base=m.base_frames(x[:, :4], 2))
    last = m(x[:, 4:], tau[:, 4:], ctrl[:, 4:], kind, first_frame=4, past=kv, context=2, base=x[:, 3:4])
    assert torch.allclose(last, full[:, 4:], atol=1e-5)
    # a network that outputs nothing repeats the last given frame, chunk after chunk
    with torch.no_grad():
        m.out.weight.zero_(), m.out.bias.zero_()
    for gen in (generate_chunked(m, x[:1, :2], ctrl[:1], "camera", 6, steps=1),
                generate_bidirectional(m, x[:1, :2], ctrl[:1], "camera", 6, steps=1)):
        assert torch.allclose(gen[0, 2:], x[0, 1].clamp(-1, 1).expand(4, -1, -1, -1), atol=1e-6)
    m.train()
    loss, _ = m.loss(x, ctrl, kind, context=2, chunks=chunks)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="base frames"):
        m(x, tau, ctrl, kind)
    with pytest.raises(ValueError, match="at least one given frame"):  # else a frame would be its own base
        m.loss(x, ctrl, kind, context=0)
    with pytest.raises(ValueError, match="residual"):
        VideoDiTConfig(residual=True, prediction="velocity")


def test_each_sample_goes_through_the_shared_expert_and_its_own_kind():
    m = _model()
    x, tau, ctrl, _ = _inputs(b=1)
    m.zero_grad()
    m(x, tau, ctrl, torch.tensor([1])).square().mean().backward()
    ffn = m.blocks[0].ffn
    assert ffn.shared[0].weight.grad.abs().sum() > 0 and ffn.experts[1][0].weight.grad.abs().sum() > 0
    assert ffn.experts[0][0].weight.grad is None or ffn.experts[0][0].weight.grad.abs().sum() == 0
    assert m.controls[0].weight.grad is None or m.controls[0].weight.grad.abs().sum() == 0
    # a new kind: its expert starts as the shared one, and tuning leaves the old kinds alone
    k = m.add_control_kind("gripper_keypoints", 12)
    assert k == 3 and torch.equal(m.blocks[0].ffn.experts[3][0].weight, m.blocks[0].ffn.shared[0].weight)
    train = {id(p) for p in m.tuning_parameters("gripper_keypoints")}
    assert id(m.blocks[0].ffn.shared[0].weight) in train and id(m.blocks[0].ffn.experts[3][0].weight) in train
    assert id(m.blocks[0].ffn.experts[0][0].weight) not in train and id(m.controls[1].weight) not in train
    x, tau, _, _ = _inputs(b=1)
    assert m(x, tau, torch.randn(1, 6, 12), torch.tensor([3])).shape == x.shape
    dense = VideoDiT(VideoDiTConfig(image_size=16, patch=8, d_model=32, layers=1, heads=2, moe="dense"))
    moe = VideoDiT(VideoDiTConfig(image_size=16, patch=8, d_model=32, layers=1, heads=2))
    per_sample = sum(p.numel() for p in moe.blocks[0].ffn.shared.parameters()) + \
        sum(p.numel() for p in moe.blocks[0].ffn.experts[0].parameters())
    assert abs(sum(p.numel() for p in dense.blocks[0].ffn.parameters()) - per_sample) <= 2 * 32 + 64


def test_the_flow_matching_loss_falls():
    torch.manual_seed(0)
    m = VideoDiT(VideoDiTConfig(image_size=16, patch=8, d_model=32, layers=2, heads=2, chunk=2))
    g = torch.Generator().manual_seed(0)
    # a moving bar: frame t is the bar at column t
    clip = -torch.ones(4, 6, 4, 16, 16)
    for t in range(6):
        clip[:, t, :, :, 2 * t:2 * t + 3] = 1.0
    ctrl, kind = torch.zeros(4, 6, 9), torch.zeros(4, dtype=torch.long)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss, parts = m.loss(clip, ctrl, kind, context=2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])  # 2.7 -> 1.8 when written
    assert set(parts) == {"rgb", "depth", "depth_3d"}


def test_chunked_generation_with_memory_stays_bounded_and_matches_shapes():
    m = _model()
    cfg = MemoryConfig(anchors=1, window=4, pool=3, retrieve=2, dedup_threshold=0.0)
    from ws_worldmodel.video.memory import MemoryKVCache

    mem = MemoryKVCache(cfg)
    first = torch.rand(1, 2, 4, 16, 16) * 2 - 1
    frames = 40
    ctrl = torch.randn(1, frames, 9)
    poses = torch.eye(4).repeat(frames, 1, 1)
    poses[:, 0, 3] = torch.linspace(0, 4, frames)
    attended = []
    out = generate_chunked(m, first, ctrl, "camera", frames, memory=mem, poses=poses, steps=2,
                           on_chunk=lambda t, n, a: attended.append(a))
    assert out.shape == (1, frames, 4, 16, 16) and torch.equal(out[:, :2], first)
    assert torch.isfinite(out).all() and len(attended) == (frames - 2) // 2
    assert max(attended) <= cfg.max_attended and len(mem) <= cfg.max_stored
    unbounded = []
    generate_chunked(m, first, ctrl, "camera", frames, steps=1, on_chunk=lambda t, n, a: unbounded.append(a))
    assert unbounded[-1] == frames - 2  # without a memory every earlier frame is attended
    teacher = generate_bidirectional(m, first, ctrl[:, :8], "camera", 8, steps=2)
    assert teacher.shape == (1, 8, 4, 16, 16)


def test_bad_inputs_get_clear_errors():
    m = _model()
    x, tau, ctrl, kind = _inputs()
    with pytest.raises(ValueError, match="frames must be"):
        m(x[:, :, :3], tau, ctrl, kind)
    with pytest.raises(ValueError, match="do not match"):
        m(x, tau[:, :3], ctrl, kind)
    with pytest.raises(ValueError, match="control-kind"):
        m(x, tau, ctrl, torch.full((2,), 7))
    with pytest.raises(ValueError, match="unknown control kind"):
        generate_chunked(m, x[:1, :2], ctrl[:1], "teleport", 6)
    with pytest.raises(ValueError, match="multiple of patch"):
        VideoDiTConfig(image_size=20, patch=8)


def test_action_guided_chunks_start_at_grasps_and_split_large_motions():
    from ws_worldmodel.video import action_guided_chunks, chunk_ids

    T = 40
    a = np.zeros((T, 7))
    a[:, 6] = 0.035
    a[13:30, 6] = 0.0  # the gripper closes at frame 13 and opens at 30
    a[:, 0] = np.where(np.arange(T) < 20, 0.0, np.linspace(0, 2, T))  # joint 1 sweeps from frame 20
    lengths = action_guided_chunks(a, min_len=4, max_len=16, step=4, frac=0.5)
    starts = np.cumsum([0] + lengths)[:-1].tolist()
    assert sum(lengths) == T and starts[:4] == [0, 13, 21, 30]  # grasp, the sweep's jump, release
    assert all(4 <= n <= 16 for n in lengths[:-1])
    still = action_guided_chunks(a[:12], min_len=4, max_len=12)
    assert still == [12]  # nothing happens: one chunk of the longest length
    ids = chunk_ids(2, [3, 1])
    assert ids.tolist() == [0, 0, 1, 1, 1, 2]
    with pytest.raises(ValueError, match="actions must be"):
        action_guided_chunks(np.zeros(5))


def test_variable_length_chunks_mask_train_and_generate():
    from ws_worldmodel.video import chunk_ids

    m = _model()
    x, tau, ctrl, kind = _inputs()
    ids = chunk_ids(2, [3, 1])  # frames 0-1 | 2-4 | 5
    base = m(x, tau, ctrl, kind, chunks=ids)
    later = x.clone()
    later[:, 4] += 1.0
    out = m(later, tau, ctrl, kind, chunks=ids)
    assert torch.allclose(out[:, :2], base[:, :2], atol=1e-6) and not torch.allclose(out[:, 2], base[:, 2], atol=1e-4)
    loss, _ = m.loss(x.clamp(-1, 1), ctrl, kind, context=2, chunks=ids)
    assert torch.isfinite(loss)
    seen = []
    out = generate_chunked(m, x[:1, :2], ctrl[:1], "camera", 6, steps=1, lengths=[3, 1],
                           on_chunk=lambda t, n, a: seen.append((t, n)))
    assert out.shape == (1, 6, 4, 16, 16) and seen == [(2, 3), (5, 1)]
    with pytest.raises(ValueError, match="nondecreasing"):
        m(x, tau, ctrl, kind, chunks=torch.tensor([0, 1, 0, 1, 2, 2]))
    with pytest.raises(ValueError, match="sum to"):
        generate_chunked(m, x[:1, :2], ctrl[:1], "camera", 6, lengths=[3])


def test_panworld_renders_wraps_and_the_revisit_commands_run(tmp_path, capsys):
    """The revisit test's world and commands at toy size (the measured run is in the README)."""
    import json

    from ws_worldmodel.video.revisit import PanWorld, main

    w = PanWorld(size=128, seed=0, blobs=40)
    xy = np.array([[[0.0, 0.0], [128.0, 256.0], [5.0, 7.0]]])
    f = w.render_batch(xy, "cpu").numpy()
    assert f.shape == (1, 3, 4, 64, 64) and np.array_equal(f[0, 0], f[0, 1])  # the plane wraps
    assert np.array_equal(f[0], w.render(xy[0])) and np.abs(f).max() <= 1.0
    assert np.array_equal(f[0, 2, :, 0, 0], f[0, 0, :, 7, 5])  # a frame 5 px right, 7 down
    c = w.controls(xy[0])
    assert c.shape == (3, 9) and np.allclose(c[2, :2], [-1.23, -2.49])
    ck = tmp_path / "rv.pt"
    assert main(["train", "--out", str(ck), "--steps", "2", "--batch", "2", "--frames", "12", "--d-model", "32",
                 "--layers", "1", "--heads", "2", "--world", "128"]) == 0
    assert main(["eval", "--checkpoint", str(ck), "--episodes", "1", "--out-frames", "12", "--steps", "1",
                 "--window", "4", "--pool", "4", "--retrieve", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["revisit_frames_per_episode"] > 0 and {"memory", "window_only"} <= set(res)
    assert len(res["mse_by_frame_memory"]) == len(res["revisit_frames"]) == res["revisit_frames_per_episode"]
    assert res["first_visit_coverage_memory"] > 0.99  # the given frames stay as anchors, the pool the way out
    with pytest.raises(ValueError, match="outlast the window"):
        main(["eval", "--checkpoint", str(ck), "--episodes", "1", "--out-frames", "4"])


def test_revisit_coverage_counts_what_the_cache_still_holds_of_the_first_visit(capsys):
    """The geometry behind the revisit test: a returning frame can only redraw its place from
    attended frames that saw it. The memory keeps the given frames; a window of as many frames
    still holds the way out after a short trip, and nothing of it after a long one."""
    import json

    from ws_worldmodel.video.memory import MemoryConfig
    from ws_worldmodel.video.revisit import (attended_frames, first_visit_coverage, main, pan_poses, revisit_frames,
                                             trip)

    mem = MemoryConfig(anchors=4, window=8, pool=16, retrieve=8, dedup_threshold=0.0)
    win = MemoryConfig(anchors=0, window=mem.max_attended, pool=0, retrieve=0)
    rng = np.random.default_rng(0)
    for out in (16, 24):
        xy = trip(rng, 512, 4, out, 4, 6.0)
        poses = pan_poses(xy, 100.0)
        scored = revisit_frames(xy, 4, out, 64)
        assert scored[-1] == len(xy) - 1 and min(scored) > 4 + out  # only frames on the way back near the start
        a_mem, a_win = attended_frames(mem, poses, 4, 4), attended_frames(win, poses, 4, 4)
        for t0 in a_mem:
            assert a_win[t0] == list(range(max(0, t0 - 20), t0))  # the most recent frames
            assert a_mem[t0][:4] == [0, 1, 2, 3] and len(a_mem[t0]) <= 20 and max(a_mem[t0]) < t0
        assert first_visit_coverage(xy, 64, a_mem, scored, 4 + out) > 0.99
        cov_win = [first_visit_coverage(xy, 64, a_win, [t], 4 + out) for t in scored]
        if out == 16:  # the first returning frame is still fully seen from the way out; the start is not
            assert cov_win[0] == 1.0 and cov_win[-1] == 0.0
        else:
            assert max(cov_win) == 0.0
    assert main(["coverage", "--episodes", "4", "--out-frames", "24"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["first_visit_coverage_window_only"] == 0.0 and res["first_visit_coverage_memory"] > 0.99
    assert len(res["first_visit_coverage_by_frame_window_only"]) == len(res["revisit_frames"]) == 10
    with pytest.raises(ValueError, match="not generated"):
        first_visit_coverage(xy, 64, a_mem, [2], 4 + out)  # a given frame is not scored
