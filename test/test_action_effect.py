"""The action-effect loss (``ws eval control --action-effect-weight``): every training window and a twin of it
with perturbed future actions, simulated in real MuJoCo, and the error of the model's predicted difference."""

from __future__ import annotations

import json

import mujoco
import numpy as np
import pytest
import torch

from ws_mppi.collect import CollectConfig, collect
from ws_mppi.config import ControllerConfig
from ws_mppi.control_table import run_control_table, train_variant
from ws_mppi.mppi import MPPIConfig
from ws_worldmodel.action_effect import ActionEffectLoss, action_effect_error
from ws_worldmodel.data import collate, denormalise
from ws_worldmodel.mlp_ensemble import PaddedMLPEnsemble, PaddedMLPEnsembleConfig
from ws_worldmodel.pretrain import PretrainConfig, pretrain, windows_from_splits
from ws_worldmodel.westworld import WestWorld, WestWorldConfig

TH, H = 3, 5
TINY = WestWorldConfig(d_model=16, n_heads=2, n_blocks=1, expert_hidden=16, bins=16, d_state=4, expand=1, target="delta",
                       dropout=0.0)


@pytest.fixture(scope="module")
def data(hopper_env):
    cfg = ControllerConfig(mppi=MPPIConfig(horizon=H, samples=16, temperature=0.1, noise_sigma=0.5))
    train, val, _ = collect(hopper_env, CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=15,
                                                      seed=0, history=TH), cfg, nthread=1)
    tw, vw = windows_from_splits(train, [val], hopper_env.model, TH + H, 2)
    return train, val, tw, vw, cfg


def _batch(tw, n=6):
    return collate([(tw, i) for i in range(n)], TH)


def _loss(hopper_env, tw, **kw):
    return ActionEffectLoss(hopper_env.model, hopper_env.frame_skip, tw.state_channels, tw.action_channels, **kw)


def test_a_twin_keeps_the_history_and_its_future_is_what_mujoco_makes_of_the_perturbed_actions(data, hopper_env):
    """The twin shares the window's observed states and the actions before its last observed state; its later
    actions differ within the control range, and each of its future states is ``mujoco.mj_step``'s from the one
    before it, frame by frame. The data's own futures are MuJoCo's under the logged actions (what the loss
    assumes). The same batch always gets the same twin (a resumed training sees the same perturbations)."""
    _, _, tw, _, _ = data
    batch = _batch(tw)
    loss = _loss(hopper_env, tw, noise=0.3, seed=0)
    twin = loss.twins(batch)
    torch.testing.assert_close(twin.states[:, :TH], batch.states[:, :TH])
    torch.testing.assert_close(twin.actions[:, :TH - 1], batch.actions[:, :TH - 1])
    assert (twin.actions[:, TH - 1:-1] - batch.actions[:, TH - 1:-1]).abs().max() > 1e-3
    s = denormalise(twin.states.double().numpy(), tw.state_channels)
    a = denormalise(twin.actions.double().numpy(), tw.action_channels)
    s_log = denormalise(batch.states.double().numpy(), tw.state_channels)
    a_log = denormalise(batch.actions.double().numpy(), tw.action_channels)
    lo, hi = hopper_env.model.actuator_ctrlrange.T
    assert np.all(a[:, TH - 1:-1] >= lo - 1e-5) and np.all(a[:, TH - 1:-1] <= hi + 1e-5)
    model, nq = hopper_env.model, hopper_env.model.nq
    for states, actions in ((s, a), (s_log, a_log)):
        for i in range(len(states)):
            d = mujoco.MjData(model)
            d.qpos[:], d.qvel[:] = states[i, TH - 1, :nq], states[i, TH - 1, nq:]
            for t in range(TH - 1, states.shape[1] - 1):
                d.ctrl[:] = actions[i, t]
                for _ in range(hopper_env.frame_skip):
                    mujoco.mj_step(model, d)
                np.testing.assert_allclose(states[i, t + 1], np.concatenate([d.qpos, d.qvel]), atol=1e-4)
    torch.testing.assert_close(loss.twins(batch).actions, twin.actions)
    other = _loss(hopper_env, tw, noise=0.3, seed=1).twins(batch)
    assert not torch.equal(other.actions, twin.actions)
    loss.close()


def test_the_action_effect_error_is_zero_when_exact_and_one_when_the_actions_are_ignored():
    g = torch.Generator().manual_seed(0)
    x, x2 = torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g)
    p = torch.randn(4, 5, 3, generator=g)
    assert float(action_effect_error(p, p + (x2 - x), x, x2)) == pytest.approx(0.0, abs=1e-6)
    assert float(action_effect_error(p, p, x, x2)) == pytest.approx(1.0)
    # a channel the mask leaves out counts for nothing
    mask = torch.tensor([[True, True, False]]).expand(4, 3)
    wild = p.clone()
    wild[..., 2] += 100.0
    assert float(action_effect_error(p, wild + (x2 - x), x, x2, mask)) == pytest.approx(0.0, abs=1e-5)
    assert float(action_effect_error(p, p + 2 * (x2 - x), x, x2)) == pytest.approx(1.0, abs=1e-6)


def test_the_loss_is_both_cross_entropies_plus_the_weighted_error_and_training_on_it_lowers_the_error(
        data, hopper_env):
    """Weight 0 is the model's own loss on the window and its twin; a weight adds weight x the action-effect
    error (recomputed here from the model's decoded predictions). A few Adam steps on the loss lower the
    action-effect error on a fixed batch."""
    _, _, tw, _, _ = data
    torch.manual_seed(0)
    net = WestWorld(TINY).eval()
    batch = _batch(tw)
    plain, weighted = _loss(hopper_env, tw, weight=0.0), _loss(hopper_env, tw, weight=2.0)
    twin = plain.twins(batch)
    l0 = plain(net, batch)
    ce_both = (net.loss(batch) + net.loss(twin)) / 2
    assert float(l0.detach()) == pytest.approx(float(ce_both.detach()), rel=1e-5)
    with torch.no_grad():
        p, p2 = net.predict(batch), net.predict(twin)
    err = float(action_effect_error(p, p2, batch.states[:, TH:], twin.states[:, TH:], batch.state_mask))
    l2 = weighted(net, batch)
    assert weighted.last["action_effect_error"] == pytest.approx(err, rel=1e-4)
    assert float(l2.detach()) == pytest.approx(float(l0.detach()) + 2 * err, rel=1e-4)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(80):
        loss = weighted(net, batch)
        first = weighted.last["action_effect_error"] if first is None else first
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(q.grad).all() for q in net.parameters() if q.grad is not None)
        opt.step()
    weighted(net, batch)
    assert weighted.last["action_effect_error"] < 0.8 * first
    plain.close()
    weighted.close()


def test_bad_settings_are_refused_by_name(data, hopper_env):
    _, _, tw, _, _ = data
    with pytest.raises(ValueError, match="noise must be a positive number"):
        _loss(hopper_env, tw, noise=0.0)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        _loss(hopper_env, tw, weight=-1.0)
    with pytest.raises(ValueError, match=r"must be qpos, qvel \(6 \+ 6 channels\) with 3 actuators"):
        ActionEffectLoss(hopper_env.model, hopper_env.frame_skip, tw.state_channels[:-1], tw.action_channels)
    loss = _loss(hopper_env, tw)
    mlp = PaddedMLPEnsemble(PaddedMLPEnsembleConfig(max_state_dim=12, max_action_dim=3, hidden=8, layers=1,
                                                    ensemble_size=1))
    with pytest.raises(ValueError, match="needs a model that decodes its logits"):
        loss(mlp, _batch(tw))
    loss.close()


def test_the_control_table_trains_westworld_with_it_and_records_it(tmp_path, data, hopper_env):
    """``run_control_table(action_effect=...)``: the WestWorld trains with the loss (other weights than without
    it, from the same start and batches), the model's record says so, and other action-effect settings
    retrain it; a model of another kind is refused by :func:`train_variant`."""
    train, val, tw, vw, cfg = data
    tcfg = PretrainConfig(history=TH, horizon=H, steps=3, eval_every=3, batch_size=4, stride=2, warmup=1)
    pre = tmp_path / "pre.pt"
    pretrain([tw], [vw], TINY, tcfg, pre, progress=False)
    pre_mlp = tmp_path / "mlp.pt"
    pretrain([tw], [vw], PaddedMLPEnsembleConfig(max_state_dim=12, max_action_dim=3, hidden=8, layers=1,
                                                 ensemble_size=1), tcfg, pre_mlp, progress=False)
    quiet = dict(seeds=[7], max_steps=3, printer=lambda *_: None)
    ae = {"weight": 1.0, "noise": 0.3}
    run_control_table("hopper", train, val, {"westworld": str(pre)}, tmp_path / "plain", tcfg, cfg,
                      variants=["pretrained"], **quiet)
    run_control_table("hopper", train, val, {"westworld": str(pre)}, tmp_path / "ae", tcfg, cfg,
                      variants=["pretrained"], action_effect=ae, **quiet)
    rec = tmp_path / "ae" / "hopper" / "models" / "westworld-pretrained.json"
    assert json.loads(rec.read_text())["made_by"]["action_effect"] == ae
    assert "action_effect" not in json.loads((tmp_path / "plain" / "hopper" / "models" /
                                              "westworld-pretrained.json").read_text())["made_by"]
    a = torch.load(tmp_path / "plain" / "hopper" / "models" / "westworld-pretrained.pt", weights_only=True)
    b = torch.load(tmp_path / "ae" / "hopper" / "models" / "westworld-pretrained.pt", weights_only=True)
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    said = []
    run_control_table("hopper", train, val, {"westworld": str(pre)}, tmp_path / "ae", tcfg, cfg,
                      variants=["pretrained"], action_effect={"weight": 0.5, "noise": 0.3}, seeds=[7], max_steps=3,
                      printer=said.append)
    assert any("trained with other settings" in m for m in said)
    from ws_worldmodel.checkpoint import load_checkpoint

    with pytest.raises(ValueError, match="the action-effect loss trains a WestWorld"):
        train_variant(load_checkpoint(pre_mlp), "pretrained", train, val, hopper_env.model, tcfg, tmp_path / "x.pt",
                      action_effect=ae, frame_skip=hopper_env.frame_skip)
