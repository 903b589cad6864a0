"""The Table 3 protocol (``ws eval control``): train pretrained/scratch variants, run MPPI with each,
write the table; cached and resumable. Real MuJoCo, real training, toy sizes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ws_mppi.collect import CollectConfig, collect
from ws_mppi.config import ControllerConfig
from ws_mppi.control_table import render_table, run_control_table
from ws_mppi.mppi import MPPIConfig
from ws_worldmodel.mlp_ensemble import PaddedMLPEnsembleConfig
from ws_worldmodel.pretrain import PretrainConfig, pretrain, windows_from_splits
from ws_worldmodel.westworld import WestWorldConfig

TH, H = 3, 5


@pytest.fixture(scope="module")
def control_data(hopper_env):
    cfg = ControllerConfig(mppi=MPPIConfig(horizon=H, samples=16, temperature=0.1, noise_sigma=0.5))
    train, val, _ = collect(hopper_env, CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=15,
                                                      seed=0, history=TH), cfg, nthread=1)
    return train, val, cfg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, control_data, hopper_env):
    """Tiny 'pretrained' checkpoints (trained a few steps on the same system)."""
    train, val, _ = control_data
    root = tmp_path_factory.mktemp("pre")
    tcfg = PretrainConfig(history=TH, horizon=H, steps=3, eval_every=3, batch_size=4, stride=2, warmup=1)
    tw, vw = windows_from_splits(train, [val], hopper_env.model, TH + H, 2)
    paths = {}
    for kind, mcfg in {"westworld": WestWorldConfig(d_model=16, n_heads=2, n_blocks=1, expert_hidden=16, bins=16,
                                                    d_state=4, expand=1),
                       "mlp_ensemble": PaddedMLPEnsembleConfig(max_state_dim=12, max_action_dim=3, hidden=16,
                                                               layers=2, ensemble_size=2)}.items():
        paths[kind] = str(root / f"{kind}.pt")
        pretrain([tw], [vw], mcfg, tcfg, paths[kind], progress=False)
    return paths


def test_table_trains_both_variants_runs_mppi_and_resumes(tmp_path, control_data, pretrained):
    train, val, cfg = control_data
    tcfg = PretrainConfig(history=TH, horizon=H, steps=3, eval_every=3, batch_size=4, stride=2, warmup=1)
    out = tmp_path / "t3"
    res = run_control_table("hopper", train, val, pretrained, out, tcfg, cfg, seeds=[7], max_steps=6,
                            printer=lambda *_: None)
    assert set(res) == {"oracle", "westworld (pretrained)", "westworld (scratch)", "mlp_ensemble (pretrained)",
                        "mlp_ensemble (scratch)"}
    for label, r in res.items():
        assert len(r["episodes"]) == 1 and r["episodes"][0]["seed"] == 7
        assert 1 <= r["episodes"][0]["length"] <= 6
    md = (out / "table3.md").read_text()
    assert "oracle MPPI (upper bound)" in md and "westworld (scratch)" in md and "hopper (1 seeds, 6 steps)" in md
    assert (out / "table3.png").stat().st_size > 0
    # the fine-tuned model started from the pretrained weights, the scratch one did not
    meta = json.loads((out / "hopper" / "models" / "westworld-pretrained.json").read_text())
    assert meta["variant"] == "pretrained" and meta["pretrained_from"] == pretrained["westworld"]
    # a second run reuses models and episodes: same numbers, no retraining
    ckpt = out / "hopper" / "models" / "westworld-scratch.pt"
    mtime = ckpt.stat().st_mtime_ns
    again = run_control_table("hopper", train, val, pretrained, out, tcfg, cfg, seeds=[7], max_steps=6,
                              printer=lambda *_: None)
    assert ckpt.stat().st_mtime_ns == mtime
    assert {k: v["reward_mean"] for k, v in again.items()} == {k: v["reward_mean"] for k, v in res.items()}
    assert render_table(out) == md
    # another step limit or planner into the same directory redoes the episodes (same models), never reuses them
    longer = run_control_table("hopper", train, val, pretrained, out, tcfg, cfg, seeds=[7], max_steps=9,
                               printer=lambda *_: None)
    assert ckpt.stat().st_mtime_ns == mtime
    assert longer["oracle"]["episodes"][0]["length"] == 9
    assert json.loads((out / "hopper" / "episodes" / "oracle-seed7.json").read_text())["made_by"]["max_steps"] == 9
    other = dataclasses.replace(cfg, mppi=dataclasses.replace(cfg.mppi, samples=8))
    run_control_table("hopper", train, val, {}, out, tcfg, other, seeds=[7], max_steps=9, printer=lambda *_: None)
    made = json.loads((out / "hopper" / "episodes" / "oracle-seed7.json").read_text())["made_by"]
    assert made["controller"]["mppi"]["samples"] == 8
    # the seed's protocol: a column without termination beside it, on the same models; zero action falls
    # (at step 169 on seed 7) with termination and goes on to the limit without it
    zero = {"zero action": "zero"}
    fell = run_control_table("hopper", train, val, {}, out, tcfg, cfg, seeds=[7], max_steps=200, extra=zero,
                             printer=lambda *_: None)
    assert fell["zero action"]["episodes"][0]["length"] < 200 and fell["zero action"]["fell"] == 1
    on = run_control_table("hopper", train, val, pretrained, out, tcfg, cfg, seeds=[7], max_steps=200, extra=zero,
                           printer=lambda *_: None, terminate_when_unhealthy=False)
    assert ckpt.stat().st_mtime_ns == mtime and not (out / "hopper-no-termination" / "models").exists()
    assert on["zero action"]["episodes"][0]["length"] == 200 and on["zero action"]["fell"] == 0
    # fallen at step 169, it went unpaid for the rest: Hopper-v2's reward pays the bonus on all 200 steps
    z = on["zero action"]
    assert z["healthy_steps_mean"] == fell["zero action"]["episodes"][0]["length"] - 1
    assert z["reward_bonus_every_step_mean"] == pytest.approx(z["reward_mean"] + 200 - z["healthy_steps_mean"], abs=1e-2)
    assert "bonus on every step" in (out / "table3.md").read_text()
    assert "hopper-no-termination (1 seeds, 200 steps)" in (out / "table3.md").read_text()
    assert json.loads((out / "hopper-no-termination" / "results.json").read_text())["terminate_when_unhealthy"] is False
    # other training settings retrain the model, and its episodes are run again on the new weights
    ep_file = out / "hopper" / "episodes" / "westworld__scratch_-seed7.json"
    old_sha = json.loads(ep_file.read_text())["made_by"]["dynamics_sha256"]
    run_control_table("hopper", train, val, {"westworld": pretrained["westworld"]}, out,
                      dataclasses.replace(tcfg, lr=tcfg.lr / 2), cfg, variants=["scratch"], seeds=[7], max_steps=9,
                      printer=lambda *_: None)
    assert ckpt.stat().st_mtime_ns != mtime
    new_sha = json.loads(ep_file.read_text())["made_by"]["dynamics_sha256"]
    assert old_sha is not None and new_sha != old_sha


def test_an_interrupted_training_resumes_from_its_state(tmp_path, control_data, pretrained):
    train, val, cfg = control_data
    tcfg = PretrainConfig(history=TH, horizon=H, steps=6, eval_every=3, batch_size=4, stride=2, warmup=1)
    out, said = tmp_path / "t3", []
    pre = {"westworld": pretrained["westworld"]}
    run_control_table("hopper", train, val, pre, out, tcfg, cfg, variants=["scratch"], seeds=[7], max_steps=3,
                      printer=said.append)
    models = out / "hopper" / "models"
    ckpt, meta = models / "westworld-scratch.pt", models / "westworld-scratch.json"
    assert any(m.startswith("hopper: training westworld (scratch)") for m in said)
    first = json.loads(meta.read_text())
    assert first["steps"] == 6 and [e["step"] for e in first["evals"]] == [3, 6]
    # killed after its last checkpoint, before the model's record was written: the rerun picks up the
    # optimiser state at step 6 instead of training again from random weights
    meta.unlink()
    mtime, said = ckpt.stat().st_mtime_ns, []
    run_control_table("hopper", train, val, pre, out, tcfg, cfg, variants=["scratch"], seeds=[7], max_steps=3,
                      printer=said.append)
    assert any(m.startswith("hopper: resuming westworld (scratch)") for m in said)
    assert ckpt.stat().st_mtime_ns == mtime
    again = json.loads(meta.read_text())
    assert again["steps"] == 6 and again["evals"] == first["evals"]
    # other settings never resume another run's state: training starts over (and runs 9 steps, not 3 more)
    meta.unlink()
    longer, said = dataclasses.replace(tcfg, steps=9), []
    run_control_table("hopper", train, val, pre, out, longer, cfg, variants=["scratch"], seeds=[7], max_steps=3,
                      printer=said.append)
    assert any(m.startswith("hopper: training westworld (scratch)") for m in said)
    assert [e["step"] for e in json.loads(meta.read_text())["evals"]] == [3, 6, 9]
    assert len(json.loads(meta.read_text())["evals"]) == 3


def test_table_rejects_bad_settings(tmp_path, control_data, pretrained):
    train, val, cfg = control_data
    tcfg = PretrainConfig(history=TH, horizon=H, steps=1, eval_every=1, batch_size=2, stride=2, warmup=1)
    with pytest.raises(ValueError, match="predict 4 steps but MPPI plans 5"):
        run_control_table("hopper", train, val, pretrained, tmp_path, dataclasses.replace(tcfg, horizon=4), cfg,
                          seeds=[0], max_steps=2)
    with pytest.raises(ValueError, match="unknown variants"):
        run_control_table("hopper", train, val, pretrained, tmp_path, tcfg, cfg, variants=["finetuned"],
                          seeds=[0], max_steps=2)
    # windows longer than the collected segments: the error says how to collect
    with pytest.raises(ValueError, match="ws collect --history 30"):
        run_control_table("hopper", train, val, {"westworld": pretrained["westworld"]}, tmp_path,
                          dataclasses.replace(tcfg, history=30), cfg, seeds=[0], max_steps=2)
    with pytest.raises(FileNotFoundError):
        render_table(tmp_path / "empty")


def test_open_loop_scores_a_rolled_out_mlp_ensemble_and_a_trajectory_model_on_the_same_windows(
        tmp_path, control_data, pretrained, hopper_env):
    """``ws eval open-loop``: the MLPEnsemble's row is its own step-by-step prediction rolled out from the last
    observed state, the trajectory model's its one prediction, both scored against the same windows in the
    training split's range units; a model of another system or a longer history is refused by name."""
    import numpy as np
    import torch

    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.data import denormalise, normalise
    from ws_worldmodel.mlp_ensemble import MLPEnsembleConfig
    from ws_worldmodel.protocols import open_loop
    from ws_worldmodel.train import train_mlp_ensemble

    train, val, _ = control_data
    mlp, _ = train_mlp_ensemble(train, val, MLPEnsembleConfig(ensemble_size=2, elites=1, hidden=16, layers=2, epochs=2,
                                                              batch_size=64, max_steps_per_epoch=5), progress=False)
    ww = load_checkpoint(pretrained["westworld"])
    res = open_loop({"mlp": mlp, "ww": ww}, train, val, hopper_env.model, tmp_path, history=TH, horizon=H, stride=2,
                    max_windows=4)
    assert set(res) == {"hold last state", "mlp", "ww"}
    assert all(len(r["mae_per_step"]) == H for r in res.values())
    # recompute both rows on the first window (windows are spread evenly: the first is window 0)
    _, win = windows_from_splits(train, [val], hopper_env.model, TH + H, 2)
    s = denormalise(win.states[0], win.state_channels)
    a = denormalise(win.actions[0], win.action_channels)
    x, mlp_pred = torch.as_tensor(s[TH - 1], dtype=torch.float32), []
    for j in range(H):
        x = mlp.predict(x[None], torch.as_tensor(a[TH - 1 + j], dtype=torch.float32)[None])[0]
        mlp_pred.append(x.numpy())
    ww_pred = ww.predict("hopper", s[None, :TH], a[None])[0]
    truth = win.states[0, TH:]
    for label, pred in (("mlp", np.stack(mlp_pred)), ("ww", ww_pred)):
        one = np.abs(normalise(pred, win.state_channels) - truth).mean(-1)
        again = open_loop({label: mlp if label == "mlp" else ww}, train, val, hopper_env.model, tmp_path / label,
                          history=TH, horizon=H, stride=2, max_windows=1)
        np.testing.assert_allclose(again[label]["mae_per_step"], one, rtol=1e-4, atol=1e-6)
    hold = np.abs(win.states[0, TH - 1:TH] - truth).mean(-1)
    np.testing.assert_allclose(again["hold last state"]["mae_per_step"], hold, rtol=1e-6)
    for f in ("open_loop.md", "open_loop.json", "open_loop.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "| ww |" in (tmp_path / "open_loop.md").read_text()
    with pytest.raises(ValueError, match="observes 3 steps, more than the windows' history of 2"):
        open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path, history=2, horizon=H, stride=2)
    ww.systems = {"walker2d": ww.systems["hopper"], "go1": ww.systems["hopper"]}
    with pytest.raises(ValueError, match=r"trained on \['walker2d', 'go1'\], not on 'hopper'"):
        open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path, history=TH, horizon=H, stride=2)


def test_the_action_effect_error_replays_each_window_in_mujoco_with_perturbed_actions(
        tmp_path, control_data, pretrained, hopper_env):
    """``ws eval open-loop --action-noise``: MuJoCo started in a window's last observed state reproduces the
    window's logged future (so the true change a perturbation makes is the simulator's), the perturbed actions
    stay in the control range and differ from the logged ones only in the future, holding the last state (which
    ignores the actions) scores exactly 1, a model's score is recomputed by hand from its two predictions, the
    same seed gives the same figures, and what the measure cannot use is refused by name."""
    import numpy as np

    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.data import denormalise, normalise
    from ws_worldmodel.protocols import _perturbed_futures, open_loop

    train, val, _ = control_data
    ww = load_checkpoint(pretrained["westworld"])
    fs = hopper_env.frame_skip
    _, win = windows_from_splits(train, [val], hopper_env.model, TH + H, 2)
    idx = np.linspace(0, len(win) - 1, 3).astype(int)  # the windows open_loop scores with max_windows=3
    s = denormalise(win.states[idx], win.state_channels)
    a = denormalise(win.actions[idx], win.action_channels)
    a_pert, x_nom, x_pert = _perturbed_futures(hopper_env.model, fs, s[:, TH - 1], a, TH, H, 0.3, 0,
                                               win.state_channels)
    np.testing.assert_allclose(x_nom, win.states[idx, TH:], atol=1e-5)  # the replay is the logged future (float32 data)
    lo, hi = hopper_env.model.actuator_ctrlrange.T
    assert np.all(a_pert >= lo) and np.all(a_pert <= hi)
    np.testing.assert_array_equal(a_pert[:, :TH - 1], a[:, :TH - 1])
    assert (a_pert[:, TH - 1:TH - 1 + H] != a[:, TH - 1:TH - 1 + H]).mean() > 0.5  # (equal where both sit at a bound)
    assert np.abs(x_pert - x_nom).mean() > 1e-3  # the perturbation changes the future
    res = open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path, history=TH, horizon=H, stride=2,
                    max_windows=3, action_noise=0.3, frame_skip=fs, seed=0)
    assert res["hold last state"]["effect_error"] == pytest.approx(1.0)
    assert res["hold last state"]["effect_error_per_step"] == pytest.approx([1.0] * H)
    p_nom = normalise(ww.predict("hopper", s[:, :TH], a), win.state_channels)
    p_pert = normalise(ww.predict("hopper", s[:, :TH], a_pert), win.state_channels)
    by_hand = np.abs((p_pert - p_nom) - (x_pert - x_nom)).mean() / np.abs(x_pert - x_nom).mean()
    assert res["ww"]["effect_error"] == pytest.approx(by_hand, rel=1e-4)
    assert res["ww"]["mae_perturbed"] == pytest.approx(np.abs(p_pert - x_pert).mean(), rel=1e-4)
    again = open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path / "again", history=TH, horizon=H, stride=2,
                      max_windows=3, action_noise=0.3, frame_skip=fs, seed=0)
    assert again["ww"]["effect_error"] == res["ww"]["effect_error"]
    assert "action-effect error" in (tmp_path / "open_loop.md").read_text()
    with pytest.raises(ValueError, match="needs the environment's frame_skip"):
        open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path, history=TH, horizon=H, stride=2, action_noise=0.3)
    with pytest.raises(ValueError, match="noise must be a positive number"):
        open_loop({"ww": ww}, train, val, hopper_env.model, tmp_path, history=TH, horizon=H, stride=2,
                  action_noise=-0.1, frame_skip=fs)
    with pytest.raises(ValueError, match="must be qpos, qvel"):
        _perturbed_futures(hopper_env.model, fs, s[:, TH - 1, :-1], a, TH, H, 0.3, 0, win.state_channels)


def test_perturbed_replays_keep_the_history_and_let_mujoco_say_what_the_perturbed_actions_do(
        tmp_path, control_data, hopper_env):
    """``ws perturbed-replays``: each replayed segment starts with its executed history unchanged, its later
    actions differ from the logged ones within the control range, and every transition after them is MuJoCo's
    (stepping the environment from the recorded state with the recorded action gives the next state); the
    original data come first, the channel ranges cover both, the same seed gives the same data, and data that
    are not full states, or a noise that is not positive, are refused by name."""
    import mujoco
    import numpy as np

    from ws_mppi.collect import perturbed_replays
    from ws_mppi.config import ConfigError
    from ws_sim.channels import ChannelMismatchError
    from ws_sim.dataset import TrajectoryDataset

    train, _, _ = control_data
    out = perturbed_replays(train, hopper_env, 0.3, history=TH, seed=0)
    n0 = len(train)
    np.testing.assert_allclose(out.observations[:n0], train.observations)  # the original first
    assert out.num_segments == 2 * train.num_segments
    assert out.attrs["perturbed_replays"]["segments"] == train.num_segments
    lo, hi = hopper_env.model.actuator_ctrlrange.T
    changed = 0
    for (a, b), (c, d) in zip(train.segment_bounds(), out.segment_bounds()[train.num_segments:]):
        p = min(TH, b - a - 1)
        np.testing.assert_allclose(out.observations[c:c + p + 1], train.observations[a:a + p + 1], atol=1e-6)
        np.testing.assert_allclose(out.actions[c:c + p], train.actions[a:a + p], atol=1e-6)
        assert np.all(out.actions[c:d] >= lo - 1e-6) and np.all(out.actions[c:d] <= hi + 1e-6)
        changed += int(np.any(np.abs(out.actions[c + p:d] - train.actions[a + p:a + p + (d - c - p)]) > 1e-6))
        for t in (c + p, d - 1):  # the first perturbed transition and the last: mujoco.mj_step's, frame by frame
            data = mujoco.MjData(hopper_env.model)
            nq = hopper_env.model.nq
            data.qpos[:], data.qvel[:] = out.observations[t, :nq], out.observations[t, nq:]
            data.ctrl[:] = out.actions[t]
            for _ in range(hopper_env.frame_skip):
                mujoco.mj_step(hopper_env.model, data)
            np.testing.assert_allclose(out.next_observations[t], np.concatenate([data.qpos, data.qvel]), atol=1e-4)
    assert changed == train.num_segments
    for ch in out.state_channels:
        j = [c.name for c in out.state_channels].index(ch.name)
        both = np.concatenate([out.observations[:, j], out.next_observations[:, j]])
        assert ch.min == pytest.approx(both.min(), abs=1e-5) and ch.max == pytest.approx(both.max(), abs=1e-5)
    again = perturbed_replays(train, hopper_env, 0.3, history=TH, seed=0, include_original=False)
    np.testing.assert_array_equal(again.actions, out.actions[n0:])
    with pytest.raises(ConfigError, match="noise must be a positive number"):
        perturbed_replays(train, hopper_env, 0.0)
    partial = TrajectoryDataset(train.observations[:, :-1], train.actions, train.rewards, train.next_observations[:, :-1],
                                train.terminals, train.timeouts, train.state_channels[:-1], train.action_channels,
                                train.env)
    with pytest.raises(ChannelMismatchError, match="state"):
        perturbed_replays(partial, hopper_env, 0.3)
