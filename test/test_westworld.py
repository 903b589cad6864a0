"""WestWorld (seed 003 sec. 4): scan, causality, mixed-size batches, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws_sim.envs import make_env
from ws_worldmodel.data import SystemData, collate, denormalise, normalise
from ws_worldmodel.ssm import SelectiveSSM, parallel_scan, sequential_scan
from ws_worldmodel.westworld import TrajectoryBatch, WestWorld, WestWorldConfig, hl_gauss

TINY = WestWorldConfig(d_model=32, n_heads=4, n_blocks=2, n_experts=3, expert_hidden=48, bins=32, d_state=8)


@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_parallel_scan_equals_the_sequential_recurrence(length):
    g = torch.Generator().manual_seed(length)
    a = torch.rand(3, length, 5, 4, generator=g)
    b = torch.randn(3, length, 5, 4, generator=g)
    torch.testing.assert_close(parallel_scan(a, b), sequential_scan(a, b))


def test_selective_ssm_parallel_and_sequential_agree_and_are_causal():
    torch.manual_seed(0)
    par = SelectiveSSM(16, d_state=4, scan="parallel")
    loop = SelectiveSSM(16, d_state=4, scan="loop")
    seq = SelectiveSSM(16, d_state=4, scan="sequential")
    seq.load_state_dict(par.state_dict())
    loop.load_state_dict(par.state_dict())
    x = torch.randn(2, 19, 16)
    y = par(x)
    torch.testing.assert_close(y, seq(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loop(x), y, rtol=1e-5, atol=1e-5)
    x2 = x.clone()
    x2[:, 11:] += 1.0
    y2 = par(x2)
    torch.testing.assert_close(y2[:, :11], y[:, :11])
    assert (y2[:, 11:] - y[:, 11:]).abs().max() > 1e-3


def test_hl_gauss_labels_are_distributions_centred_on_the_value():
    v = torch.tensor([0.0, 0.31, 0.5, 1.0])
    p = hl_gauss(v, 20, 0.75)
    torch.testing.assert_close(p.sum(-1), torch.ones(4))
    centers = (torch.arange(20) + 0.5) / 20
    assert abs(float(p[2] @ centers) - 0.5) < 1e-4 and abs(float(p[1] @ centers) - 0.31) < 0.01


def _batch(b=2, t=12, cs=5, ca=2, th=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TrajectoryBatch(torch.rand(b, t, cs, generator=g), torch.rand(b, t, ca, generator=g),
                           torch.ones(b, cs, dtype=torch.bool), torch.ones(b, ca, dtype=torch.bool),
                           torch.randint(0, 6, (b, cs, 4), generator=g), torch.randint(0, 6, (b, ca, 4), generator=g), th)


@pytest.mark.parametrize("tokens", ["channel", "step"])
def test_one_pass_prediction_is_causal_in_the_actions(tokens):
    """Predicted s_t may depend on a_{<t} only; future states (targets) are never read (channel and step
    tokens)."""
    torch.manual_seed(0)
    model = WestWorld(WestWorldConfig(**{**TINY.__dict__, "tokens": tokens})).eval()
    batch = _batch()
    th, t = batch.history, batch.states.shape[1]
    base = model.predict(batch)  # (B, H, Cs): row j is state s_{th + j}
    for k in (th, th + 3, t - 2):
        changed = batch.actions.clone()
        changed[:, k] += 0.7
        pred = model.predict(TrajectoryBatch(batch.states, changed, batch.state_mask, batch.action_mask,
                                             batch.state_struct, batch.action_struct, th))
        # a_k first influences s_{k+1}, i.e. prediction row k + 1 - th
        torch.testing.assert_close(pred[:, : k + 1 - th], base[:, : k + 1 - th])
        assert (pred[:, k + 1 - th:] - base[:, k + 1 - th:]).abs().max() > 1e-5
    future = batch.states.clone()
    future[:, th:] = torch.rand_like(future[:, th:])
    same = model.predict(TrajectoryBatch(future, batch.actions, batch.state_mask, batch.action_mask,
                                         batch.state_struct, batch.action_struct, th))
    torch.testing.assert_close(same, base)


@pytest.mark.parametrize("tokens", ["channel", "step"])
def test_mixed_dimensionality_batches_are_exact_under_padding(tokens):
    """A hopper window predicts the same alone and beside a larger walker window (channel tokens; step tokens,
    whose set encoding averages over the real channels only)."""
    torch.manual_seed(0)
    model = WestWorld(WestWorldConfig(**{**TINY.__dict__, "tokens": tokens})).eval()
    small = _batch(b=1, cs=12, ca=3, seed=1)
    big = _batch(b=1, cs=18, ca=6, seed=2)
    alone = model.predict(small)
    b = 2
    states = torch.zeros(b, 12, 18)
    actions = torch.zeros(b, 12, 6)
    states[0, :, :12], actions[0, :, :3] = small.states[0], small.actions[0]
    states[1], actions[1] = big.states[0], big.actions[0]
    smask = torch.zeros(b, 18, dtype=torch.bool)
    amask = torch.zeros(b, 6, dtype=torch.bool)
    smask[0, :12], amask[0, :3], smask[1], amask[1] = True, True, True, True
    sidx = torch.zeros(b, 18, 4, dtype=torch.long)
    aidx = torch.zeros(b, 6, 4, dtype=torch.long)
    sidx[0, :12], aidx[0, :3], sidx[1], aidx[1] = small.state_struct[0], small.action_struct[0], big.state_struct[0], big.action_struct[0]
    mixed = TrajectoryBatch(states, actions, smask, amask, sidx, aidx, small.history)
    out = model.predict(mixed)
    torch.testing.assert_close(out[0, :, :12], alone[0], rtol=1e-4, atol=1e-5)
    assert torch.all(out[0, :, 12:] == 0)
    # garbage in the padding changes nothing
    states[0, :, 12:] = 5.0
    actions[0, :, 3:] = -3.0
    out2 = model.predict(TrajectoryBatch(states, actions, smask, amask, sidx, aidx, small.history))
    torch.testing.assert_close(out2, out)


def test_the_batched_experts_equal_the_gated_sum_of_each_expert():
    """Eq. (9) in two matmuls equals sum_e g_e expert_e(z) computed expert by expert (1e-5)."""
    torch.manual_seed(0)
    blk = WestWorld(TINY).blocks[0].eval()
    z = torch.randn(6, 9, TINY.d_model)
    g = torch.softmax(torch.randn(6, TINY.n_experts), dim=-1)
    want = sum(g[:, i, None, None] * e(z) for i, e in enumerate(blk.experts))
    torch.testing.assert_close(blk._experts(z, g), want, rtol=1e-5, atol=1e-5)


def test_routing_weights_are_a_distribution_per_channel():
    model = WestWorld(TINY).eval()
    _, routing = model(_batch())
    assert len(routing) == TINY.n_blocks
    for g in routing:
        assert g.shape == (2, 5, TINY.n_experts)
        torch.testing.assert_close(g.sum(-1), torch.ones(2, 5))
    dense = WestWorld(WestWorldConfig(**{**TINY.__dict__, "use_moe": False}))
    assert dense(_batch())[1] == []


def test_training_loss_falls_on_collected_hopper_and_walker_windows(small_datasets):
    """Two systems of different sizes in one batch; 100 Adam steps must cut the loss by a quarter."""
    from ws_mppi.collect import CollectConfig, collect
    from ws_mppi.config import ControllerConfig
    from ws_mppi.mppi import MPPIConfig

    hopper_train, _ = small_datasets
    walker = make_env("walker2d")
    walker_train, _, _ = collect(walker, CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=30),
                                 ControllerConfig(MPPIConfig(horizon=10, samples=32)), nthread=2)
    systems = [SystemData.from_dataset(hopper_train, make_env("hopper").model, length=8, stride=2),
               SystemData.from_dataset(walker_train, walker.model, length=8, stride=2)]
    assert systems[0].states.shape[2] == 12 and systems[1].states.shape[2] == 18
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = WestWorld(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fixed = collate([(systems[k % 2], int(rng.integers(len(systems[k % 2])))) for k in range(32)], history=3)
    with torch.no_grad():
        before = float(model.loss(fixed))
    for _ in range(100):
        items = [(systems[k % 2], int(rng.integers(len(systems[k % 2])))) for k in range(16)]
        loss = model.loss(collate(items, history=3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(fixed))
    assert after < 0.75 * before, (before, after)


def test_delta_bins_round_trip_and_put_no_change_in_the_middle():
    from ws_worldmodel.westworld import delta_to_unit, unit_to_delta

    d = torch.tensor([-5.0, -2.0, -0.3, -0.001, 0.0, 0.004, 0.5, 2.0])
    u = delta_to_unit(d, 0.01, 2.0)
    assert float(u[4]) == 0.5 and torch.all(u[1:] >= u[:-1]) and float(u[0]) == 0.0 and float(u[-1]) == 1.0
    torch.testing.assert_close(unit_to_delta(u, 0.01, 2.0)[1:], d[1:])  # -5 is clamped to the range's end


def test_the_delta_target_starts_at_the_last_state_and_leaves_the_training_range():
    """An untrained ``target="delta"`` WestWorld predicts the last observed state (no change), also where
    that state lies outside [0, 1]; the absolute encoding cannot predict outside [0, 1]."""
    torch.manual_seed(0)
    batch = _batch(b=3, t=12, th=5)
    batch.states[:, 4, 0] = 1.4  # the last observed state, outside the training range
    batch.states[:, 4, 1] = -0.3
    delta = WestWorld(WestWorldConfig(**{**TINY.__dict__, "target": "delta"})).eval()
    pred = delta.predict(batch)
    torch.testing.assert_close(pred, batch.states[:, 4:5].expand_as(pred), rtol=0, atol=2e-3)
    step = WestWorld(WestWorldConfig(**{**TINY.__dict__, "target": "delta", "tokens": "step"})).eval()
    torch.testing.assert_close(step.predict(batch), batch.states[:, 4:5].expand_as(pred), rtol=0, atol=2e-3)
    absolute = WestWorld(TINY).eval().predict(batch)
    assert float(absolute.max()) <= 1.0 and float(absolute.min()) >= 0.0
    with pytest.raises(ValueError, match="target"):
        WestWorldConfig(target="relative")
    with pytest.raises(ValueError, match="tokens"):
        WestWorldConfig(tokens="pair")


@pytest.mark.parametrize("tokens", ["channel", "step"])
def test_the_delta_target_learns_to_beat_holding_the_last_state(small_datasets, tokens):
    """150 Adam steps on collected Hopper windows (300 with step tokens, which learn slower at this size):
    the delta model's error on held-out windows falls below the hold-last-state baseline's (it starts there;
    the absolute encoding starts far above it), with channel tokens and with step tokens."""
    train, val = small_datasets
    model_mj = make_env("hopper").model
    tr = SystemData.from_dataset(train, model_mj, length=10, stride=2)
    va = SystemData.from_dataset(val, model_mj, length=10, stride=5, ranges_from=train)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = WestWorld(WestWorldConfig(**{**TINY.__dict__, "target": "delta", "tokens": tokens}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150 if tokens == "channel" else 300):
        loss = model.loss(collate([(tr, int(rng.integers(len(tr)))) for _ in range(16)], history=4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    fixed = collate([(va, i) for i in range(min(len(va), 64))], history=4)
    pred = model.eval().predict(fixed)
    true = fixed.states[:, 4:]
    hold = fixed.states[:, 3:4].expand_as(true)
    mae, hold_mae = float((pred - true).abs().mean()), float((hold - true).abs().mean())
    assert mae < 0.95 * hold_mae, (mae, hold_mae)


def test_normalisation_round_trips_and_needs_ranges(small_datasets):
    train, _ = small_datasets
    x = train.observations[:10]
    np.testing.assert_allclose(denormalise(normalise(x, train.state_channels), train.state_channels), x, atol=1e-5)
    env = make_env("hopper")
    with pytest.raises(ValueError, match="no finite range"):
        normalise(x, env.state_channels)  # the model's channels have unbounded root coordinates


@pytest.mark.parametrize("after", [1, 2, 5, 12])
def test_ssm_extra_token_equals_running_it_after_the_prefix(after):
    """The system-embedding branch equals the SSM run on [x_1..x_k, extra] (last output)."""
    torch.manual_seed(after)
    ssm = SelectiveSSM(16, d_state=4, d_conv=4)
    x = torch.randn(3, 12, 16)
    extra = torch.randn(3, 1, 16)
    out, extra_out = ssm(x, extra=extra, extra_after=after)
    torch.testing.assert_close(out, ssm(x))
    torch.testing.assert_close(extra_out, ssm(torch.cat([x[:, :after], extra], 1))[:, -1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="extra_after"):
        ssm(x, extra=extra, extra_after=0)


@pytest.mark.parametrize("after", [1, 7, 19])
def test_the_fused_inference_scan_equals_the_training_path(after):
    """Without autograd on CPU the SSM reads out h_t step by step without materialising every state
    (``fused_selective_scan``); outputs, the extra token's included, equal the sequential reference
    and a whole WestWorld's prediction equals it to 1e-5 on fixed weights."""
    torch.manual_seed(after)
    ssm = SelectiveSSM(16, d_state=4)
    ref = SelectiveSSM(16, d_state=4, scan="sequential")
    ref.load_state_dict(ssm.state_dict())
    x, extra = torch.randn(3, 19, 16), torch.randn(3, 1, 16)
    with torch.no_grad():
        out, extra_out = ssm(x, extra=extra, extra_after=after)
    want, want_extra = ref(x, extra=extra, extra_after=after)  # grad enabled: the autograd path
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(extra_out, want_extra, rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    net = WestWorld(TINY).eval()
    batch = _batch(b=3, t=20, th=8)
    fused = net.predict(batch)  # predict runs without autograd
    for blk in net.blocks:
        blk.ssm.scan_mode = "sequential"
    torch.testing.assert_close(fused, net.predict(batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", ["auto", "parallel", "sequential"])
@pytest.mark.parametrize("split", [1, 2, 9])
def test_an_ssm_run_in_two_parts_with_its_carried_state_equals_one_run(scan, split):
    """``return_state``/``state`` continue a sequence exactly (the causal conv's last inputs and h), with and
    without autograd, the system token's branch at the split or inside the continuation included; the
    caller's state is not changed by the continuation."""
    from ws_worldmodel.ssm import SSMState

    torch.manual_seed(split)
    ssm = SelectiveSSM(8, d_state=4, scan=scan)
    x, extra = torch.randn(3, 14, 8), torch.randn(3, 1, 8)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            full, full_extra = ssm(x, extra=extra, extra_after=split)
            head, head_extra, state = ssm(x[:, :split], extra=extra, extra_after=split, return_state=True)
            kept = SSMState(state.conv.clone(), state.h.clone())
            tail = ssm(x[:, split:], state=state)
            torch.testing.assert_close(torch.cat([head, tail], 1), full, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(head_extra, full_extra, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(state.h, kept.h, rtol=0, atol=0)
            _, inner_extra = ssm(x[:, split:], state=state, extra=extra, extra_after=3)
            torch.testing.assert_close(inner_extra, ssm(x, extra=extra, extra_after=split + 3)[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="does not continue"):
        ssm(x[:2], state=state)


@pytest.mark.parametrize("target,tokens", [("absolute", "channel"), ("delta", "channel"), ("delta", "step")])
@pytest.mark.parametrize("th", [1, 2, 6])
def test_a_shared_history_runs_once_and_predicts_what_the_whole_batch_does(target, tokens, th):
    """MPPI's K futures from one past: ``shared_history`` runs the history once and carries its SSM states
    and expert gates to every sample; logits equal the full forward's to 1e-5 (Sys-MoE and dense, delta and
    absolute targets), also when a large batch runs in chunks of samples (``SHARED_CHUNK_TOKENS``), the
    model and ``TrajectoryWorldModel.predict`` choose it for equal histories, and differing histories are
    refused."""
    import dataclasses

    for moe in (True, False):
        torch.manual_seed(th)
        net = WestWorld(dataclasses.replace(TINY, target=target, use_moe=moe, tokens=tokens)).eval()
        b = _batch(b=5, t=th + 7, th=th, seed=th)
        b.states[:, :th] = b.states[:1, :th]
        b.actions[:, :th - 1] = b.actions[:1, :th - 1]
        b.state_struct[:], b.action_struct[:] = b.state_struct[:1].clone(), b.action_struct[:1].clone()
        with torch.no_grad():
            want, want_routing = net(b)
            got, got_routing = net(b, shared_history=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for r_got, r_want in zip(got_routing, want_routing):
            torch.testing.assert_close(r_got, r_want, rtol=1e-5, atol=1e-5)
        whole = net.predict(b, shared_history=True)
        net.SHARED_CHUNK_TOKENS = 2 * 7 * (1 if tokens == "step" else b.states.shape[2])  # chunks of 2, 2 and 1
        with torch.no_grad():
            assert [sl.stop - sl.start for sl, _, _ in net._shared_chunks(b)] == [2, 2, 1]
            torch.testing.assert_close(net(b, shared_history=True)[0], got, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(net.predict(b, shared_history=True), whole, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(whole, net.decode(want, b) * b.state_mask[:, None, :], rtol=1e-5, atol=1e-5)
    b.states[1, 0] += 0.1
    with pytest.raises(ValueError, match="same history"):
        net(b, shared_history=True)


@pytest.mark.parametrize("target,tokens", [("absolute", "channel"), ("delta", "channel"), ("delta", "step")])
@pytest.mark.parametrize("th", [1, 2, 6])
def test_an_imagination_continues_the_one_pass_prediction_step_by_step(target, tokens, th):
    """``WestWorld.imagine``: the history once, then one query step per call, each given the action into it;
    step j equals the one-pass prediction of step j (Sys-MoE and dense, delta and absolute targets, channel and
    step tokens, histories of 1, 2 and 6 steps) to 1e-5, and later actions do not change earlier steps."""
    import dataclasses

    for moe in (True, False):
        torch.manual_seed(th)
        net = WestWorld(dataclasses.replace(TINY, target=target, use_moe=moe, tokens=tokens)).eval()
        b = _batch(b=1, t=th + 7, th=th, seed=th)
        want = net.predict(b)
        im = net.imagine(b)
        got = torch.stack([im.step(b.actions[:, th - 1 + j]) for j in range(7)], dim=1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert im.steps == 7
    with pytest.raises(ValueError, match="one sample"):
        net.imagine(_batch(b=2, t=th + 3, th=th))


@pytest.mark.parametrize("th", [1, 2, 6])
def test_trajworld_runs_a_shared_history_once_with_the_same_rollout(th):
    """TrajWorld's KV-cached rollout with ``shared_history``: the history's keys and values are computed once
    and copied to every sample; the rollout equals the per-sample one, also decoded in chunks of samples, and
    differing histories are refused."""
    from ws_worldmodel.trajworld import TrajWorld, TrajWorldConfig

    torch.manual_seed(th)
    net = TrajWorld(TrajWorldConfig(d_model=16, n_heads=2, n_blocks=2, bins=16)).eval()
    b = _batch(b=5, t=th + 6, th=th, seed=th)
    b.states[:, :th] = b.states[:1, :th]
    b.actions[:, :th - 1] = b.actions[:1, :th - 1]
    want = net.predict(b)
    torch.testing.assert_close(net.predict(b, shared_history=True), want, rtol=1e-5, atol=1e-5)
    net.SHARED_CHUNK_TOKENS = 2 * 6 * (b.states.shape[2] + b.actions.shape[2])  # chunks of 2, 2 and 1 samples
    torch.testing.assert_close(net.predict(b, shared_history=True), want, rtol=1e-5, atol=1e-5)
    if th > 1:
        b.actions[2, 0] += 0.1
        with pytest.raises(ValueError, match="same history"):
            net.predict(b, shared_history=True)


@pytest.mark.parametrize("after", [3, 40])
def test_the_fused_training_scan_has_the_gradients_of_the_sequential_reference(after):
    """Training on CPU runs the fused scan with its analytic, chunk-recomputing backward: the output and
    every parameter's and the input's gradient (the extra token's branch included) equal autograd through
    the plain loop, across chunk boundaries (45 steps, chunks of 32)."""
    torch.manual_seed(after)
    fused = SelectiveSSM(8, d_state=4).double()
    ref = SelectiveSSM(8, d_state=4, scan="sequential").double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 45, 8, dtype=torch.float64)
    extra = torch.randn(2, 1, 8, dtype=torch.float64)
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [m(xi, extra=extra, extra_after=after) for m, xi in zip((fused, ref), xs)]
    w, we = torch.randn_like(outs[0][0]), torch.randn_like(outs[0][1])
    for (y, ye) in outs:
        ((y * w).sum() + (ye * we).sum()).backward()
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(xs[0].grad, xs[1].grad)
    for (name, p1), p0 in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, msg=name)


@pytest.mark.parametrize("mode", ["parallel", "loop"])
def test_linear_recurrence_gradients_equal_autograd_through_the_loop(mode):
    from ws_worldmodel.ssm import linear_recurrence

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 9, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(2, 9, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(2, 9, 3, 2, generator=g, dtype=torch.float64)
    (linear_recurrence(a, b, mode) * w).sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    (sequential_scan(a, b) * w).sum().backward()
    torch.testing.assert_close(ga, a.grad)
    torch.testing.assert_close(gb, b.grad)
    assert torch.autograd.gradcheck(lambda x, y: linear_recurrence(x, y, mode), (a.detach().requires_grad_(),
                                                                                 b.detach().requires_grad_()))


def test_shipped_westworld_checkpoints_load_and_plan(hopper_env, small_controller_config):
    """The committed corpus-pretrained WestWorld and its Hopper fine-tune (README commands)."""
    from pathlib import Path

    import ws_worldmodel
    from ws_mppi.runner import make_controller
    from ws_worldmodel.checkpoint import load_checkpoint

    ckpts = Path(ws_worldmodel.__file__).parent / "checkpoints"
    pre = load_checkpoint(ckpts / "westworld_pretrained.pt")
    assert pre.kind == "westworld" and len(pre.systems) >= 10 and "hopper" not in pre.systems
    delta = load_checkpoint(ckpts / "westworld_corpus_delta.pt")  # the 45-minute run of docs/westworld.md
    assert delta.kind == "westworld" and delta.net.cfg.target == "delta" and "gym-hopper" not in delta.systems
    assert (delta.history, delta.horizon) == (20, 40) and len(delta.systems) == 14
    ctrl = make_controller(hopper_env, str(ckpts / "hopper_westworld.pt"), small_controller_config, seed=0)
    state, _ = hopper_env.reset(seed=0)
    action = ctrl.plan(state, 0)
    assert action.shape == (3,) and np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1)
