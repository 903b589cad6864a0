"""The policy whose video-depth stream is the video world model (issues 7 and 9): separate weights
per stream, one shared attention, the context mask, loading a trained world model, training on
real MuJoCo demonstrations and the command line."""

import json

import numpy as np
import pytest
import torch

from ws_policy.data import DemoDataset, collect_demos, write_demos
from ws_policy.dit_policy import DiTPolicy
from ws_policy.model import PolicyConfig, build_policy, default_vocabulary

TOY = dict(image_size=32, future_size=16, chunk=4, d_model=32, heads=2, layers=2, vocab=tuple(default_vocabulary()),
           video_model="dit")


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(rgb=torch.rand(b, 3, 32, 32, generator=g) * 2 - 1, depth=torch.rand(b, 1, 32, 32, generator=g) + 0.5,
                state=torch.rand(b, 8, generator=g), words=torch.ones(b, 16, dtype=torch.long),
                tau=torch.full((b,), 0.4), future_rgb=torch.randn(b, 2, 3, 16, 16, generator=g),
                future_depth=torch.randn(b, 2, 1, 16, 16, generator=g), actions=torch.randn(b, 4, 7, generator=g))


def test_the_streams_have_their_own_weights_and_share_one_attention():
    torch.manual_seed(0)
    model = build_policy(PolicyConfig(**TOY))
    assert isinstance(model, DiTPolicy) and model.video.cfg.residual and model.video.cfg.patch == 8
    # the video world model's adaLN-zero gates start closed; open them so every path is live
    for blk in model.video.blocks:
        torch.nn.init.normal_(blk.ada.weight, std=0.02)
        torch.nn.init.normal_(blk.ada.bias, std=0.02)
    torch.nn.init.normal_(model.video.out.weight, std=0.02)
    x = _inputs()
    with torch.no_grad():
        out = model(**x)
        assert out["future_rgb"].shape == (2, 2, 3, 16, 16) and out["future_depth"].shape == (2, 2, 1, 16, 16)
        assert out["actions"].shape == (2, 4, 7)
        # attention is shared: the actions read the future frames, the future frames read the actions
        moved = model(**{**x, "future_rgb": x["future_rgb"] + 1.0})
        assert not torch.allclose(moved["actions"], out["actions"])
        moved = model(**{**x, "actions": x["actions"] + 1.0})
        assert not torch.allclose(moved["future_rgb"], out["future_rgb"])
    # the clean context never reads the noisy targets: the current frame's tokens at the output
    # layer are the same whatever the future frames and actions are
    seen = []
    hook = model.video.norm.register_forward_hook(lambda m, a, o: seen.append(o[:, 0].clone()))
    with torch.no_grad():
        model(**x)
        model(**{**x, "future_rgb": -x["future_rgb"], "actions": -x["actions"]})
    hook.remove()
    assert torch.allclose(seen[0], seen[1], atol=1e-6)
    # separate weights: a loss on the frames alone reaches the action stream's first layer (through
    # attention) but not its last feed-forward, which only the action tokens read
    model.zero_grad()
    model(**x)["future_rgb"].square().mean().backward()
    assert model.action_blocks[0].qkv.weight.grad.abs().sum() > 0
    last = model.action_blocks[-1].ffn[0].weight.grad
    assert last is None or last.abs().sum() == 0
    assert not {id(p) for p in model.video.parameters()} & {id(p) for p in model.action_blocks.parameters()}


def test_the_observation_stream_sees_the_full_resolution_frame_as_context():
    """``dit_obs``: the current frame at ``image_size`` as its own stream. A checkerboard detail that
    averages out at the stream's resolution reaches the actions only through it; it is context
    (it does not read the targets) and has its own weights."""
    torch.manual_seed(0)
    x = _inputs()
    checker = torch.ones(32, 32)
    checker[1::2, ::2] = checker[::2, 1::2] = -1  # zero mean in every 2x2 block: gone after the area resize
    detail = {**x, "rgb": x["rgb"] + 0.3 * checker}
    plain = build_policy(PolicyConfig(**TOY, stem="linear"))  # no observation stream, no 32 px stem
    with torch.no_grad():
        assert torch.allclose(plain(**detail)["actions"], plain(**x)["actions"], atol=1e-5)
    model = build_policy(PolicyConfig(**TOY, dit_obs=True))
    with torch.no_grad():
        out = model(**x)
        assert not torch.allclose(model(**detail)["actions"], out["actions"], atol=1e-4)
    seen = []
    finish = model.obs_blocks[-1].finish
    model.obs_blocks[-1].finish = lambda xo, att: seen.append(finish(xo, att).clone()) or seen[-1]
    with torch.no_grad():
        model(**x)
        model(**{**x, "future_rgb": -x["future_rgb"], "actions": -x["actions"]})
    assert len(seen) == 2 and torch.allclose(seen[0], seen[1], atol=1e-6)
    streams = [model.video, model.obs_blocks, model.action_blocks]
    ids = [{id(p) for p in s.parameters()} for s in streams]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    with pytest.raises(ValueError, match="needs video_model 'dit'"):
        PolicyConfig(dit_obs=True)


def test_the_world_model_loads_into_the_stream_and_configs_are_checked():
    from ws_worldmodel.video.dit import VideoDiT, VideoDiTConfig

    policy = build_policy(PolicyConfig(**TOY))
    world = VideoDiT(VideoDiTConfig(**policy.cfg.dit))
    policy.load_video(world)
    for k, v in world.state_dict().items():
        assert torch.equal(policy.video.state_dict()[k], v)
    with pytest.raises(ValueError, match="differs"):
        policy.load_video(VideoDiT(VideoDiTConfig(**{**policy.cfg.dit, "moe": "dense"})))
    for bad, match in ((dict(mode="action_only"), "mot or world"), (dict(dit_kind="wheels"), "control kinds"),
                       (dict(dit={**policy.cfg.dit, "d_model": 64}), "must match"),
                       (dict(dit={**policy.cfg.dit, "image_size": 32, "patch": 16}), "future_size"),
                       (dict(dit={**policy.cfg.dit, "patch": 4}), "patches a side"),
                       (dict(video_model="vae"), "video_model")):
        with pytest.raises(ValueError, match=match):
            PolicyConfig(**{**TOY, **bad})


def test_it_trains_on_demonstrations_and_runs_from_the_command_line(tmp_path, capsys):
    """Real MuJoCo demonstrations and clips, a world model trained by 'ws video experts',
    then 'ws policy train --video-model dit --video-init' and the runner (about 15 s)."""
    from ws_cli.main import main
    from ws_policy.train import PolicyRunner, load_policy, policy_loss, save_policy, train_policy
    from ws_worldmodel.video.clips import collect_clips, write_clips
    from ws_worldmodel.video.experts import load, train

    eps, attrs = collect_demos("pick_place", 2, size=32)
    # the flow-matching loss falls (a fixed batch, the same noise: the training loss itself)
    from ws_policy.model import Vocabulary
    from ws_policy.train import Normalizer, batch_from_windows

    cfg = PolicyConfig(**TOY, fov_y_deg=attrs["fovy"])
    data = DemoDataset(eps, chunk=4)
    batch = batch_from_windows([data.window(k) for k in range(0, len(data), max(1, len(data) // 8))], cfg,
                               Normalizer.from_episodes(eps), Vocabulary(list(cfg.vocab), cfg.max_words))

    def loss_of(m):
        with torch.no_grad():
            return float(policy_loss(m, batch, torch.Generator().manual_seed(5))[0])

    torch.manual_seed(0)
    before = loss_of(build_policy(cfg))
    model, hist = train_policy(cfg, data, steps=60, batch_size=8, lr=2e-3)
    assert loss_of(model) < 0.8 * before
    path = save_policy(model, tmp_path / "p.pt")
    again, _ = load_policy(path)
    assert isinstance(again, DiTPolicy)
    obs = {"rgb": eps[0].rgb[0], "depth": eps[0].depth[0].astype(np.float32), "qpos": eps[0].qpos[0],
           "instruction": eps[0].instruction}
    a, b = PolicyRunner(model, seed=3)(obs), PolicyRunner(again, seed=3)(obs)
    assert a.shape == (4, 7) and np.all(np.isfinite(a)) and np.allclose(a, b, atol=1e-5)

    # the command line: a world model from 'ws video experts train' starts the stream
    clips = tmp_path / "clips.hdf5"
    write_clips(clips, [collect_clips("joints", 2, frames=6, stride=6, size=16, progress=False)])
    train(clips, "per-kind", tmp_path / "world.pt", kinds=("joints",), steps=2, batch=4, d_model=32, layers=2,
          heads=2, patch=8, progress=False)
    world, _ = load(tmp_path / "world.pt")
    demos = write_demos(eps, attrs, tmp_path / "demos.hdf5")
    capsys.readouterr()
    assert main(["policy", "train", "--demos", str(demos), "--model", "mot", "--video-model", "dit", "--video-init",
                 str(tmp_path / "world.pt"), "--steps", "2", "--batch-size", "4", "--chunk", "4",
                 "--out", str(tmp_path / "cli.pt"), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    hist = json.loads(printed[printed.index("{"):])
    assert hist["mot"]["loaded_tensors"] == len(world.state_dict())  # the whole stream, nothing else
    net, _ = load_policy(tmp_path / "cli.pt")
    assert isinstance(net, DiTPolicy) and net.video.cfg == world.cfg and net.cfg.dit_kind == "joints"
    # the observation stream pretrains with the world model ('--model world --obs-stream') and
    # '--init' carries all of it into the policy: every tensor of the world model, whose action
    # stream (instruction and state tokens) the policy shares
    common = ["--demos", str(demos), "--video-model", "dit", "--obs-stream", "--steps", "2", "--batch-size", "4",
              "--chunk", "4", "--threads", "1", "--d-model", "32", "--layers", "2"]
    assert main(["policy", "train", "--model", "world", "--out", str(tmp_path / "wo.pt")] + common) == 0
    capsys.readouterr()
    assert main(["policy", "train", "--model", "mot", "--init", str(tmp_path / "wo.pt"),
                 "--out", str(tmp_path / "po.pt")] + common) == 0
    printed = capsys.readouterr().out
    loaded = json.loads(printed[printed.index("{"):])["mot"]["loaded_tensors"]
    wo, _ = load_policy(tmp_path / "wo.pt")
    po, _ = load_policy(tmp_path / "po.pt")
    obs_keys = [k for k in wo.state_dict() if k.startswith(("obs_blocks.", "rgb_in", "depth_in", "pos_cur"))]
    assert wo.obs_blocks is not None and obs_keys and loaded == len(wo.state_dict())
    assert all(k in po.state_dict() for k in obs_keys)
    # wrong combinations are one-line errors, and nothing is written
    for extra in (["--model", "action_only", "--video-model", "dit"], ["--video-init", str(tmp_path / "world.pt")],
                  ["--obs-stream"],
                  ["--model", "mot", "--video-model", "dit", "--video-kind", "camera", "--video-init",
                   str(tmp_path / "world.pt")]):
        assert main(["policy", "train", "--demos", str(demos), "--steps", "1", "--out", str(tmp_path / "x.pt")]
                    + extra) == 2
    assert not (tmp_path / "x.pt").exists()
