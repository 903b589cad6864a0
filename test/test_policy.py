"""WorldScape Policy: the Mixture-of-Transformers, flow matching, the executor, input checks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from ws_policy.data import DemoDataset, DemoError, collect_demos, read_demos, write_demos
from ws_policy.executor import ChunkExecutor
from ws_policy.model import PolicyConfig, PolicyInputError, WorldScapePolicy, default_vocabulary
from ws_policy.train import (PolicyCheckpointError, PolicyRunner, TwoStagePolicy, load_policy,
                             save_policy, train_policy)

TINY = dict(image_size=32, future_size=16, patch=8, frames=2, stride=4, chunk=4, d_model=32, heads=4, layers=1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    eps, attrs = collect_demos("pick_place", 3, seed=0, size=32)
    path = write_demos(eps, attrs, tmp_path_factory.mktemp("demos") / "pick.hdf5")
    return path


def _cfg(**kw):
    return PolicyConfig(**{**TINY, "vocab": tuple(default_vocabulary()), **kw})


def _inputs(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, f = cfg.image_size, cfg.future_size
    return dict(rgb=torch.rand(b, 3, s, s, generator=g) * 2 - 1, depth=torch.rand(b, 1, s, s, generator=g) + 0.5,
                state=torch.rand(b, 8, generator=g), words=torch.randint(1, 5, (b, cfg.max_words), generator=g),
                tau=torch.full((b,), 0.5), future_rgb=torch.randn(b, cfg.frames, 3, f, f, generator=g),
                future_depth=torch.randn(b, cfg.frames, 1, f, f, generator=g),
                actions=torch.randn(b, cfg.chunk, 7, generator=g))


def test_experts_have_their_own_weights_and_share_one_attention():
    torch.manual_seed(0)
    cfg = _cfg()
    net = WorldScapePolicy(cfg).eval()
    blk = net.blocks[0]
    for part in (blk.qkv, blk.out, blk.ffn.up, blk.ffn.down):
        ptrs = {m.weight.data_ptr() for m in part.maps}
        assert len(ptrs) == 3  # video, depth, action: three separate weight tensors
    x = _inputs(cfg)
    with torch.no_grad():
        base = net(**x)
        # the action expert's feed-forward is not applied to video tokens (one block: it acts after attention)
        blk.ffn.down.maps[2].weight.add_(1.0)
        same = net(**x)
        torch.testing.assert_close(same["future_rgb"], base["future_rgb"])
        assert not torch.allclose(same["actions"], base["actions"])
        blk.ffn.down.maps[0].weight.add_(1.0)  # the video expert's is
        assert not torch.allclose(net(**x)["future_rgb"], base["future_rgb"])
        # attention is shared: video tokens read the action tokens, and actions read the depth tokens
        moved = net(**{**x, "actions": x["actions"] + 1.0})
        assert not torch.allclose(moved["future_rgb"], net(**x)["future_rgb"])
        moved = net(**{**x, "future_depth": x["future_depth"] + 1.0})
        assert not torch.allclose(moved["actions"], net(**x)["actions"])


def test_the_clean_context_never_reads_the_noisy_targets():
    cfg = _cfg(layers=2)
    net = WorldScapePolicy(cfg).eval()
    seen = []
    net.final.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    x = _inputs(cfg)
    with torch.no_grad():
        net(**x)
        net(**{**x, "actions": -x["actions"], "future_rgb": -x["future_rgb"]})
    n_ctx_video = net.n_cur
    torch.testing.assert_close(seen[0][:, :n_ctx_video], seen[1][:, :n_ctx_video])  # current-frame video tokens
    assert not torch.allclose(seen[0], seen[1])


def test_depth_positional_embedding_follows_the_depth():
    net = WorldScapePolicy(_cfg())
    near, far = torch.full((1, 1, 32, 32), 0.5), torch.full((1, 1, 32, 32), 1.5)
    a, b = net.depth_positional_embedding(near), net.depth_positional_embedding(far)
    assert a.shape == (1, 16, 32) and not torch.allclose(a, b)
    assert not torch.allclose(a[0, 0], a[0, 5])  # different patches, different 3D points


def test_the_instruction_token_keeps_which_colour_is_which():
    """Word embeddings are concatenated in order, so swapping the cube's and the target's colours changes
    the action the policy predicts."""
    torch.manual_seed(0)
    cfg = _cfg()
    net = WorldScapePolicy(cfg).eval()
    from ws_policy.model import Vocabulary

    voc = Vocabulary(list(cfg.vocab), cfg.max_words)
    x = _inputs(cfg, b=1)
    a = torch.as_tensor(voc.encode("pick up the red cube and place it on the green target"))[None]
    b = torch.as_tensor(voc.encode("pick up the green cube and place it on the red target"))[None]
    with torch.no_grad():
        assert not torch.allclose(net(**{**x, "words": a})["actions"], net(**{**x, "words": b})["actions"])


@pytest.mark.parametrize("stem", ["conv", "linear"])
def test_both_patch_embeddings_give_one_token_per_patch(stem):
    cfg = _cfg(stem=stem)
    net = WorldScapePolicy(cfg).eval()
    v, d, _ = net._context(*(_inputs(cfg)[k] for k in ("rgb", "depth", "state", "words")))
    assert v.shape == d.shape == (2, (32 // 8) ** 2, 32)
    with pytest.raises(ValueError, match="divisible by 4"):
        _cfg(stem="conv", patch=6, image_size=36, future_size=18)


@pytest.mark.parametrize("mode, head, privileged", [("mot", "flow", False), ("action_only", "flow", False),
                                                    ("world", "flow", False), ("mot", "idm", False),
                                                    ("idm", "idm", False), ("action_only", "flow", True)])
def test_training_lowers_the_loss(demos, mode, head, privileged):
    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    cfg = _cfg(mode=mode, action_head=head, privileged=privileged)
    torch.manual_seed(0)
    model, hist = train_policy(cfg, ds, steps=60, batch_size=8, lr=2e-3)
    first, last = np.mean(hist["loss"][:10]), np.mean(hist["loss"][-10:])
    assert last < 0.8 * first, (mode, head, first, last)


def test_runner_gives_a_chunk_in_joint_units_and_refuses_malformed_input(demos, tmp_path):
    eps, _ = read_demos(demos)
    cfg = _cfg()
    model, _ = train_policy(cfg, DemoDataset(eps, chunk=4), steps=2, batch_size=4)
    path = save_policy(model, tmp_path / "p.pt")
    loaded, payload = load_policy(path)
    runner = PolicyRunner(loaded, steps=3)
    e = eps[0]
    obs = {"rgb": e.rgb[0], "depth": e.depth[0].astype(np.float32), "qpos": e.qpos[0], "instruction": e.instruction}
    chunk = runner(obs)
    lo, hi = runner._limits.action_low, runner._limits.action_high  # the actuators' ranges
    assert chunk.shape == (4, 7) and np.all(chunk >= lo - 1e-9) and np.all(chunk <= hi + 1e-9)
    bad = [({**obs, "rgb": e.rgb[0][:16]}, "rgb must be"), ({**obs, "rgb": e.rgb[0].astype(np.float32)}, "uint8"),
           ({**obs, "depth": np.full((32, 32), np.nan)}, "NaN"), ({**obs, "instruction": ""}, "non-empty"),
           ({**obs, "instruction": "juggle the red cube"}, "juggle"), ({**obs, "qpos": np.zeros(3)}, "qpos"),
           ({k: v for k, v in obs.items() if k != "depth"}, "needs 'rgb' and 'depth'")]
    for o, what in bad:
        with pytest.raises(PolicyInputError, match=what):
            runner(o)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PolicyCheckpointError):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(DemoError):
        read_demos(tmp_path / "junk.pt")


def test_two_stage_policy_round_trips(demos, tmp_path):
    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4)
    world, _ = train_policy(_cfg(mode="world"), ds, steps=2, batch_size=4)
    idm, _ = train_policy(_cfg(mode="idm", action_head="idm"), ds, steps=2, batch_size=4)
    path = save_policy(TwoStagePolicy(world, idm), tmp_path / "two.pt")
    model, payload = load_policy(path)
    assert isinstance(model, TwoStagePolicy) and payload["kind"] == "two_stage"
    e = eps[0]
    chunk = PolicyRunner(model, steps=2)({"rgb": e.rgb[0], "depth": e.depth[0].astype(np.float32), "qpos": e.qpos[0],
                                          "instruction": e.instruction})
    assert chunk.shape == (4, 7) and np.all(np.isfinite(chunk))
    with pytest.raises(ValueError, match="world model"):
        PolicyRunner(idm)


def _stepped_policy(chunk):
    """A policy whose chunk requested at step t commands t, t+1, ... (so alignment is visible)."""
    state = {"step": 0}

    def policy(obs):
        return np.arange(state["step"], state["step"] + chunk, dtype=float)[:, None].repeat(2, axis=1)
    return policy, state


@pytest.mark.parametrize("latency", [0, 1, 2, 4])
def test_executor_never_leaves_a_gap_and_skips_what_latency_made_stale(latency):
    policy, state = _stepped_policy(8)
    ex = ChunkExecutor(policy, chunk=8, replan_every=4, ensemble_m=None, latency_steps=latency)
    for step in range(60):
        state["step"] = step
        assert ex.act(step, obs=None).tolist() == [step, step]  # the action meant for this very step
    assert ex.gaps == 0 and ex.requests == 15


def test_executor_counts_gaps_when_latency_outlasts_the_chunk():
    policy, state = _stepped_policy(8)
    ex = ChunkExecutor(policy, chunk=8, replan_every=4, ensemble_m=None, latency_steps=6)  # 4 + 6 > 8
    for step in range(40):
        state["step"] = step
        ex.act(step, obs=None)
    assert ex.gaps > 0


def test_executor_keeps_acting_from_the_old_chunk_while_the_model_thinks():
    """A worker thread blocked on inference: every control step still gets its action at once."""
    release, calls = threading.Event(), []

    def policy(obs):
        calls.append(obs)
        if len(calls) > 1:
            release.wait(10)
        return np.full((8, 1), float(len(calls)))

    ex = ChunkExecutor(policy, chunk=8, replan_every=2, ensemble_m=0.5, latency_steps=None)
    got = [ex.act(step, obs=step)[0] for step in range(7)]  # the second request is stuck in the worker
    assert got == [1.0] * 7 and ex.gaps == 0
    release.set()
    ex.wait_for_inference()
    assert ex.act(7, obs=7)[0] > 1.0  # the new chunk joins the ensemble
    assert calls[:2] == [0, 2]  # the first chunk at step 0, the next requested at step 2 (and waited for)


def test_ws_policy_collect_train_eval_end_to_end(tmp_path, capsys, monkeypatch):
    """The command line a user runs: demonstrations, a (tiny) policy, a closed-loop evaluation report."""
    import json

    from ws_cli.main import main

    demos = tmp_path / "d.hdf5"
    assert main(["policy", "collect", "--task", "push", "--episodes", "2", "--size", "32", "--workspace", "narrow",
                 "--stratified", "--out", str(demos)]) == 0
    assert read_demos(demos)[1]["stratified"]
    ckpt = tmp_path / "p.pt"
    assert main(["policy", "train", "--demos", str(demos), "--model", "action_only", "--steps", "3", "--batch-size", "4",
                 "--d-model", "32", "--layers", "1", "--chunk", "4", "--threads", "1", "--out", str(ckpt)]) == 0
    out = tmp_path / "eval"  # a simulated latency of one step: the result cannot depend on the machine's speed
    assert main(["policy", "eval", "--checkpoint", str(ckpt), "--task", "push", "--episodes", "1", "--no-video",
                 "--threads", "1", "--out", str(out), "--demos", str(demos), "--latency", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 1 and report["gaps"] == 0 and report["latency"]["count"] > 0
    assert report["workspace"] == "narrow"  # evaluated where it was trained, from the checkpoint
    printed = capsys.readouterr().out
    assert "successes" in printed and "holding still" in printed
    net, _ = load_policy(ckpt)
    assert net.cfg.fov_y_deg == 45.0  # the task camera's, from the demonstrations, for the DPE
    assert not list(tmp_path.glob("p.pt.*.state"))  # the finished run's training state is gone
    # an interrupted run's state is never overwritten unasked, and a foreign file is refused by name
    (tmp_path / "r.pt.action_only.state").write_bytes(b"not a state")
    again = ["policy", "train", "--demos", str(demos), "--model", "action_only", "--steps", "3", "--batch-size", "4",
             "--d-model", "32", "--layers", "1", "--chunk", "4", "--threads", "1", "--out", str(tmp_path / "r.pt")]
    capsys.readouterr()
    assert main(again) == 2 and "add --resume" in capsys.readouterr().err
    assert main([*again, "--resume"]) == 2 and "r.pt.action_only.state" in capsys.readouterr().err
    assert not (tmp_path / "r.pt").exists()
    # the keypoint encoder: random crops of 7/8 of the frame by default, evaluated on the centre crop
    kp = tmp_path / "kp.pt"
    assert main(["policy", "train", "--demos", str(demos), "--model", "mot", "--encoder", "keypoints", "--steps", "2",
                 "--batch-size", "4", "--d-model", "32", "--layers", "1", "--chunk", "4", "--threads", "1",
                 "--out", str(kp)]) == 0
    net, _ = load_policy(kp)
    assert (net.cfg.encoder, net.cfg.crop, net.cfg.keypoints) == ("keypoints", 28, 16)
    assert main(["policy", "eval", "--checkpoint", str(kp), "--task", "push", "--episodes", "1", "--no-video",
                 "--threads", "1", "--out", str(tmp_path / "kp_eval"), "--latency", "1"]) == 0
    assert main(["policy", "train", "--demos", str(demos), "--crop", "24", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
    # 'default' is the policy shipped for the task: a clear error where none ships, the file where one does
    from ws_policy import train as train_mod

    monkeypatch.setitem(train_mod.DEFAULT_POLICIES, "push", tmp_path / "not_shipped.pt")
    capsys.readouterr()
    assert main(["policy", "eval", "--checkpoint", "default", "--task", "push", "--episodes", "1", "--no-video"]) == 2
    assert "no default policy ships for 'push'" in capsys.readouterr().err
    monkeypatch.setitem(train_mod.DEFAULT_POLICIES, "push", ckpt)
    assert main(["policy", "eval", "--checkpoint", "default", "--task", "push", "--episodes", "1", "--no-video",
                 "--threads", "1", "--out", str(tmp_path / "eval_default"), "--latency", "1"]) == 0
    assert json.loads((tmp_path / "eval_default" / "report.json").read_text())["episodes"] == 1
    assert main(["policy", "train", "--demos", str(tmp_path / "missing.hdf5"), "--out", str(ckpt)]) == 2
    assert main(["policy", "eval", "--checkpoint", str(tmp_path / "missing.pt"), "--episodes", "1"]) == 2


def test_two_stage_reuses_a_trained_world_model_as_stage_one(demos, tmp_path):
    """'ws policy train --model two_stage --init world.pt' trains only the inverse-dynamics model."""
    from ws_cli.main import main

    common = ["--demos", str(demos), "--steps", "2", "--batch-size", "2", "--d-model", "32", "--layers", "1",
              "--chunk", "4", "--threads", "1"]
    assert main(["policy", "train", "--model", "world", *common, "--out", str(tmp_path / "w.pt")]) == 0
    assert main(["policy", "train", "--model", "two_stage", "--init", str(tmp_path / "w.pt"), *common,
                 "--out", str(tmp_path / "two.pt")]) == 0
    assert main(["policy", "train", "--model", "two_stage", "--init", str(tmp_path / "w.pt"), "--videos", str(demos),
                 *common, "--out", str(tmp_path / "unused.pt")]) == 2  # the videos would train nothing
    assert not (tmp_path / "unused.pt").exists()
    world, _ = load_policy(tmp_path / "w.pt")
    two, payload = load_policy(tmp_path / "two.pt")
    assert isinstance(two, TwoStagePolicy) and list(payload["extra"]["history"]) == ["idm"]
    for k, v in world.state_dict().items():
        torch.testing.assert_close(two.world.state_dict()[k], v)


def test_action_weight_scales_only_the_action_term(demos):
    from ws_policy.train import Normalizer, batch_from_windows, policy_loss
    from ws_policy.model import Vocabulary

    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    losses = {}
    for w in (1.0, 3.0):
        cfg = _cfg(action_weight=w)
        torch.manual_seed(0)
        net = WorldScapePolicy(cfg)
        batch = batch_from_windows([ds.window(i) for i in range(4)], cfg, Normalizer.from_episodes(ds.episodes),
                                   Vocabulary(list(cfg.vocab), cfg.max_words))
        losses[w] = policy_loss(net, batch, torch.Generator().manual_seed(1))
    (l1, parts), (l3, _) = losses[1.0], losses[3.0]
    assert float((l3 - l1).detach()) == pytest.approx(2 * parts["diff_actions"], rel=1e-4)


def test_videos_train_the_future_frames_and_not_the_actions(demos, tmp_path):
    """Episodes used as videos only (``--videos``): their windows carry the video and depth terms
    and no action term, they join every batch, and a policy that predicts no video refuses them."""
    from ws_cli.main import main
    from ws_policy.model import Vocabulary
    from ws_policy.train import Normalizer, batch_from_windows, policy_loss

    eps, _ = read_demos(demos)
    vids = DemoDataset(eps, chunk=4, frames=2, stride=4, successes_only=False, use_actions=False)
    assert not any(vids.window(i)["valid"].any() for i in range(0, len(vids), 7))
    cfg = _cfg()
    torch.manual_seed(0)
    net = WorldScapePolicy(cfg)
    batch = batch_from_windows([vids.window(i) for i in range(4)], cfg, Normalizer.from_episodes(eps),
                               Vocabulary(list(cfg.vocab), cfg.max_words))
    loss, parts = policy_loss(net, batch, torch.Generator().manual_seed(1))
    assert parts["diff_actions"] == 0.0 and parts["diff_future_rgb"] > 0
    loss.backward()
    assert net.action_out.weight.grad.abs().sum() == 0  # only the action term reads the action output
    assert net.frgb_in.weight.grad.abs().sum() > 0
    # the videos are in the batches: with the same demonstrations and seed, training differs
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    _, plain = train_policy(cfg, ds, steps=3, batch_size=4, lr=1e-3)
    _, mixed = train_policy(cfg, ds, steps=3, batch_size=4, lr=1e-3, videos=vids, video_share=0.5)
    assert plain["loss"] != mixed["loss"]
    for bad, match in ((dict(videos=vids, video_share=1.0), "video_share"), (dict(videos=ds), "use_actions=False")):
        with pytest.raises(ValueError, match=match):
            train_policy(cfg, ds, steps=1, batch_size=4, **bad)
    with pytest.raises(ValueError, match="predicts none"):
        train_policy(_cfg(mode="action_only"), ds, steps=1, batch_size=4, videos=vids)
    common = ["policy", "train", "--demos", str(demos), "--videos", str(demos), "--steps", "1", "--batch-size", "4",
              "--d-model", "32", "--layers", "1", "--chunk", "4", "--threads", "1"]
    assert main([*common, "--model", "action_only", "--out", str(tmp_path / "x.pt")]) == 2
    assert main([*common, "--video-share", "0", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
    assert main([*common, "--out", str(tmp_path / "m.pt")]) == 0
    assert load_policy(tmp_path / "m.pt")[1]["extra"]["videos"] == str(demos)


def test_the_report_says_where_pick_and_place_failed():
    """``evaluate_policy`` splits pick-and-place failures into missed grasps and missed places:
    a policy that holds the arm still never lifts the cube; the scripted expert lifts it and
    puts it on the target."""
    from ws_policy.evaluate import LIFTED_M, evaluate_policy

    def hold(obs):
        return np.tile(np.asarray(obs["qpos"][:7], dtype=np.float64), (4, 1))

    still = evaluate_policy(hold, "pick_place", 1, seed=3, size=32, chunk=4, latency=0, video=False,
                            workspace="narrow")
    ep = still["episodes_detail"][0]
    assert not ep["success"] and ep["cube_lift_m"] < LIFTED_M and ep["cube_to_target_m"] > 0.05
    assert still["failure_modes"] == {"cube_not_lifted": 1, "lifted_not_placed": 0, "median_miss_m": None}
    assert "start_cube_error_m" not in still and "start_cube_error_m" not in ep  # no object head, no localisation
    expert = evaluate_policy("scripted", "pick_place", 1, seed=3, size=32, video=False, workspace="narrow")
    ep = expert["episodes_detail"][0]
    assert ep["success"] and ep["cube_lift_m"] > LIFTED_M and ep["cube_to_target_m"] < 0.03
    assert expert["failure_modes"] == {}


def test_training_resumes_to_the_weights_of_an_uninterrupted_run(demos, tmp_path):
    """An interrupted run continued from its training state ends where one run of all the steps ends."""
    from ws_policy.errors import PolicyError

    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    cfg = _cfg(mode="action_only", object_aux=0.5)
    whole, _ = train_policy(cfg, ds, steps=6, batch_size=4, lr=2e-3, seed=3)

    class Interrupted(Exception):
        pass

    def stop_at_5(step, net):
        if step == 5:
            raise Interrupted
        return False

    state, extra = tmp_path / "run.state", {"curve": [{"step": 2}]}
    with pytest.raises(Interrupted):  # the state of step 3 was written; steps 4 and 5 are lost
        train_policy(cfg, ds, steps=6, batch_size=4, lr=2e-3, seed=3, state_path=state, save_every=3,
                     callback=stop_at_5, state_extra=extra)
    extra_now = {"curve": []}
    resumed, hist = train_policy(cfg, ds, steps=6, batch_size=4, lr=2e-3, seed=3, state_path=state, save_every=3,
                                 state_extra=extra_now)
    assert extra_now == {"curve": [{"step": 2}]} and len(hist["loss"]) == 6
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(PolicyError, match="another run: lr"):
        train_policy(cfg, ds, steps=6, batch_size=4, lr=1e-3, seed=3, state_path=state)
    with pytest.raises(PolicyError, match="another run: windows"):  # other demonstrations
        train_policy(cfg, DemoDataset(eps[:2], chunk=4, frames=2, stride=4), steps=6, batch_size=4, lr=2e-3, seed=3,
                     state_path=state)
    with pytest.raises(PolicyError, match="config fields: object_aux"):
        train_policy(_cfg(mode="action_only", object_aux=1.0), ds, steps=6, batch_size=4, lr=2e-3, seed=3,
                     state_path=state)


def test_the_object_auxiliary_reads_the_context_and_trains_the_vision(demos):
    """``object_aux``: a loss term on the cube's and target's positions from the state token, whose
    gradient reaches the keypoint trunk; it needs the object state, and nothing of it runs at inference."""
    from ws_policy.model import Vocabulary, object_positions, object_targets
    from ws_policy.train import Normalizer, batch_from_windows, policy_loss

    yaw = np.deg2rad(30.0)  # cube A at the band's middle, turned 30 degrees; the target 10 cm to the left
    objects = np.r_[0.26, 0.0, 0.03, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2), np.zeros(7), 0.26, 0.1, 0.03]
    np.testing.assert_allclose(object_targets(objects), [0, 0, 0, 0, 1, 0, np.sin(4 * yaw), np.cos(4 * yaw)],
                               atol=1e-6)
    cube, target = object_positions(object_targets(objects))
    np.testing.assert_allclose(cube, objects[:3], atol=1e-6)
    np.testing.assert_allclose(target, objects[14:], atol=1e-6)
    with pytest.raises(ValueError, match="17 values"):
        object_targets(np.zeros(16))
    with pytest.raises(ValueError, match="object_aux"):
        _cfg(object_aux=-1.0)
    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    cfg = _cfg(encoder="keypoints", keypoints=4, trunk_width=8, trunk_blocks=1, crop=28, object_aux=2.0)
    torch.manual_seed(0)
    net = WorldScapePolicy(cfg)
    windows = [ds.window(i) for i in range(4)]
    batch = batch_from_windows(windows, cfg, Normalizer.from_episodes(ds.episodes), Vocabulary(list(cfg.vocab)))
    loss, parts = policy_loss(net, batch, torch.Generator().manual_seed(1))
    flow = sum(v for k, v in parts.items() if k.startswith("diff_")) + cfg.alpha * parts["3d"]
    assert float(loss.detach()) == pytest.approx(flow + 2.0 * parts["objects"], rel=1e-5) and parts["objects"] > 0
    net.zero_grad()  # the auxiliary's output alone sends gradient into the camera's trunk
    out = net(batch["rgb"], batch["depth"], batch["state"], batch["words"], torch.full((4,), 0.5),
              future_rgb=batch["future_rgb"], future_depth=batch["future_depth"], actions=batch["actions"])
    out["objects"].square().sum().backward()
    assert net.keypoint_encoder.trunk.net[0].weight.grad.abs().sum() > 0
    # the runner reports where the head places the objects, in metres, for a policy with the auxiliary only
    from ws_policy.train import PolicyRunner

    net.normalizer = Normalizer.from_episodes(ds.episodes)
    w0 = windows[0]
    obs = {"rgb": w0["rgb"], "depth": w0["depth"], "qpos": w0["qpos"], "instruction": w0["instruction"]}
    runner = PolicyRunner(net.eval())
    where = runner.object_positions(obs)
    with torch.no_grad():  # the head's output at the state token, in metres through object_positions
        head = net(*runner._tensors(obs), torch.zeros(1), future_rgb=torch.zeros(1, 2, 3, 16, 16),
                   future_depth=torch.zeros(1, 2, 1, 16, 16), actions=torch.zeros(1, 4, 7))["objects"][0].numpy()
    np.testing.assert_allclose(where["cube"], object_positions(head)[0], atol=1e-6)
    np.testing.assert_allclose(where["target"], object_positions(head)[1], atol=1e-6)
    with pytest.raises(ValueError, match="without the object-position auxiliary"):
        PolicyRunner(WorldScapePolicy(_cfg()).eval()).object_positions(obs)
    # an evaluation reports where the head places the cube and the target in each episode's first frame
    from ws_policy.evaluate import evaluate_policy
    from ws_sim.piper_tasks import PiperManipEnv

    rep = evaluate_policy(runner, "pick_place", 1, seed=3, size=cfg.image_size, chunk=4, latency=0, video=False,
                          workspace="narrow")
    env = PiperManipEnv("pick_place", render_mode="rgbd", width=cfg.image_size, height=cfg.image_size,
                        workspace="narrow")
    first, _ = env.reset(seed=3)
    env.close()
    placed = runner.object_positions(first)
    cube_err = float(np.linalg.norm(placed["cube"] - first["objects"][:3]))
    assert rep["episodes_detail"][0]["start_cube_error_m"] == pytest.approx(cube_err, abs=1e-4)
    assert rep["start_cube_error_m"]["median"] == rep["start_cube_error_m"]["max"] == pytest.approx(cube_err, abs=1e-4)
    assert rep["start_target_error_m"]["median"] == pytest.approx(
        float(np.linalg.norm(placed["target"] - first["objects"][14:17])), abs=1e-4)
    # and as the arm approaches (every few steps until the cube is lifted)
    approach = rep["episodes_detail"][0]["approach_cube_error_m"]
    assert rep["approach_cube_error_m"]["median"] == approach > 0
    with pytest.raises(Exception, match="object state"):
        batch_from_windows([{k: v for k, v in w.items() if k != "objects"} for w in windows], cfg,
                           Normalizer.from_episodes(ds.episodes), Vocabulary(list(cfg.vocab)))


def test_sample_prediction_learns_the_clean_chunk_and_sampling_lands_on_it(demos):
    """x-prediction (``action_prediction="sample"``): the action term is the clean chunk's squared error,
    and Euler sampling ends exactly on the network's clean estimate, whatever the starting noise."""
    from ws_policy.model import Vocabulary
    from ws_policy.train import Normalizer, batch_from_windows, policy_loss, sample

    eps, _ = read_demos(demos)
    ds = DemoDataset(eps, chunk=4, frames=2, stride=4)
    c = torch.linspace(-0.5, 0.5, 7)
    outs = {}
    for pred in ("velocity", "sample"):
        cfg = _cfg(mode="action_only", action_prediction=pred)
        torch.manual_seed(0)
        net = WorldScapePolicy(cfg).eval()
        with torch.no_grad():  # the action tokens' output is the constant c, whatever the input
            net.action_out.weight.zero_()
            net.action_out.bias.copy_(c)
        batch = batch_from_windows([ds.window(i) for i in range(6)], cfg, Normalizer.from_episodes(ds.episodes),
                                   Vocabulary(list(cfg.vocab), cfg.max_words))
        _, parts = policy_loss(net, batch, torch.Generator().manual_seed(1))
        if pred == "sample":
            valid = batch["valid"].float()
            want = ((c - batch["actions"]).square().mean(-1) * valid).sum() / valid.sum()
            assert parts["diff_actions"] == pytest.approx(float(want), rel=1e-5)
        with torch.no_grad():
            outs[pred] = [sample(net, *(batch[k][:1] for k in ("rgb", "depth", "state", "words")), steps=5,
                                 generator=torch.Generator().manual_seed(s))["actions"][0] for s in (0, 1)]
    for a in outs["sample"]:  # lands on the clean estimate
        torch.testing.assert_close(a, c.expand(4, 7), atol=1e-5, rtol=0)
    v0, v1 = outs["velocity"]  # a constant velocity only shifts the noise: the samples differ by it
    assert not torch.allclose(v0, v1, atol=1e-3)
    torch.testing.assert_close(v0 - v1, (torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
                                         - torch.randn(4, 7, generator=torch.Generator().manual_seed(1))), atol=1e-5,
                               rtol=0)
    with pytest.raises(ValueError, match="action_prediction"):
        _cfg(action_prediction="epsilon")
    torch.manual_seed(0)
    _, hist = train_policy(_cfg(mode="action_only", action_prediction="sample"), ds, steps=60, batch_size=8, lr=2e-3)
    assert np.mean(hist["loss"][-10:]) < 0.8 * np.mean(hist["loss"][:10])
