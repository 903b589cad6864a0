"""The MLPEnsemble dynamics model: learning, checkpoints and their failure modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws_sim.channels import ChannelMismatchError
from ws_worldmodel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ws_worldmodel.mlp_ensemble import MLPEnsembleConfig, invariant_input_channels
from ws_worldmodel.train import one_step_errors, train_mlp_ensemble

TINY = MLPEnsembleConfig(ensemble_size=3, elites=2, hidden=64, layers=2, epochs=15, patience=4,
                         batch_size=256, max_steps_per_epoch=60)


@pytest.fixture(scope="module")
def trained(small_datasets):
    train, val = small_datasets
    return train_mlp_ensemble(train, val, TINY, seed=0, progress=False)


def test_validation_error_beats_an_unchanged_state(trained, small_datasets):
    model, hist = trained
    err = hist["val_one_step"]
    assert err["model_mse"] < 0.25 * err["unchanged_mse"], err
    assert hist["epochs"][-1]["val_mse_elites"] < hist["epochs"][0]["val_mse_elites"]
    assert len(model.elite_idx) == 2


def test_large_validation_splits_are_scored_on_a_subset(small_datasets):
    train, val = small_datasets
    cfg = MLPEnsembleConfig(ensemble_size=2, elites=1, hidden=16, layers=1, epochs=1, max_steps_per_epoch=2)
    _, hist = train_mlp_ensemble(train, val, cfg, seed=0, progress=False, val_subsample=100)
    assert hist["val_scored_transitions"] == 100 and hist["val_transitions"] == len(val) > 100
    _, full = train_mlp_ensemble(train, val, cfg, seed=0, progress=False, val_subsample=0)
    assert full["val_scored_transitions"] == len(val)


def test_root_x_is_not_an_input(trained):
    model, _ = trained
    assert invariant_input_channels(model.state_channels) == [0]
    s = torch.zeros(1, 12)
    s[0, 1] = 1.25
    a = torch.zeros(1, 3)
    shifted = s.clone()
    shifted[0, 0] = 5.0
    d0 = model.predict(s, a) - s
    d1 = model.predict(shifted, a) - shifted
    torch.testing.assert_close(d0, d1)


def test_checkpoint_round_trip_loads_without_training_code(tmp_path, trained, small_datasets):
    model, hist = trained
    path = save_checkpoint(model, tmp_path / "m.pt", {"note": "test"})
    back, payload = load_checkpoint(path, with_payload=True)
    _, val = small_datasets
    s = torch.as_tensor(val.observations[:50])
    a = torch.as_tensor(val.actions[:50])
    torch.testing.assert_close(back.predict(s, a), model.predict(s, a))
    assert payload["info"]["note"] == "test" and payload["code_version"]
    assert back.state_channels == model.state_channels
    np.testing.assert_allclose(one_step_errors(back, val)["model_mse"], one_step_errors(model, val)["model_mse"])


def test_bad_checkpoints_are_named(tmp_path, trained):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a WorldScape checkpoint"):
        load_checkpoint(foreign)
    model, _ = trained
    path = save_checkpoint(model, tmp_path / "ok.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)


def test_checkpoint_for_another_environment_is_refused(tmp_path, trained):
    from ws_mppi.config import default_config
    from ws_mppi.runner import make_controller
    from ws_sim.envs import make_env

    model, _ = trained
    path = save_checkpoint(model, tmp_path / "hopper.pt")
    with pytest.raises(ChannelMismatchError, match="checkpoint .*hopper.pt state"):
        make_controller(make_env("walker2d"), str(path), default_config("walker2d"))


def test_learned_mppi_runs_closed_loop(tmp_path, trained):
    from ws_mppi.config import ControllerConfig
    from ws_mppi.mppi import MPPIConfig
    from ws_mppi.runner import make_controller, run_episode
    from ws_sim.envs import make_env

    model, _ = trained
    path = save_checkpoint(model, tmp_path / "hopper.pt")
    env = make_env("hopper", max_episode_steps=30)
    ctrl = make_controller(env, str(path), ControllerConfig(MPPIConfig(horizon=8, samples=16)), seed=0)
    res = run_episode(env, ctrl, seed=5)
    assert res.length >= 1 and np.isfinite(res.reward)
    assert ctrl.last.states.shape == (16, 8, 12)


def test_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path, small_datasets):
    """Two epochs, then a resumed call to four, equal four epochs in one call bit for bit (weights,
    elites, history); the state of another seed or other settings is refused with what differs."""
    train, val = small_datasets
    cfg = MLPEnsembleConfig(ensemble_size=2, elites=1, hidden=16, layers=2, epochs=4, patience=10,
                            max_steps_per_epoch=5)
    whole, hist_whole = train_mlp_ensemble(train, val, cfg, seed=3, progress=False)
    state = tmp_path / "m.pt.state"
    half = MLPEnsembleConfig(**{**cfg.__dict__, "epochs": 2})
    _, first = train_mlp_ensemble(train, val, half, seed=3, progress=False, state_path=state)
    assert state.is_file() and len(first["epochs"]) == 2 and first["stopped"] == "epochs"
    resumed, hist = train_mlp_ensemble(train, val, cfg, seed=3, progress=False, state_path=state, resume=True)
    assert hist["epochs"] == hist_whole["epochs"] and hist["stopped"] == "epochs"
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # it went on from the file, not from scratch: a mark put in the saved history comes back
    st = torch.load(state, weights_only=True)
    st["history"][0]["train_nll"] = -123.0
    torch.save(st, state)
    _, marked = train_mlp_ensemble(train, val, cfg, seed=3, progress=False, state_path=state, resume=True)
    assert marked["epochs"][0]["train_nll"] == -123.0 and len(marked["epochs"]) == 4
    with pytest.raises(CheckpointError, match="seed"):
        train_mlp_ensemble(train, val, cfg, seed=4, progress=False, state_path=state, resume=True)
    wider = MLPEnsembleConfig(**{**cfg.__dict__, "hidden": 32})
    with pytest.raises(CheckpointError, match="config"):
        train_mlp_ensemble(train, val, wider, seed=3, progress=False, state_path=state, resume=True)


def test_cosine_schedule_anneals_to_lr_min_and_resumes_on_it(tmp_path, small_datasets):
    """The cosine schedule falls every epoch from lr to lr_min at the planned end; a run stopped
    by the time budget resumes to the uninterrupted run's weights (the schedule's position is in
    the state), and the planned epochs cannot change on resume (they shape the schedule)."""
    train, val = small_datasets
    cfg = MLPEnsembleConfig(ensemble_size=2, elites=1, hidden=16, layers=1, epochs=4, patience=10,
                            max_steps_per_epoch=3, lr=1e-2, lr_schedule="cosine", lr_min=1e-4)
    whole, hist_whole = train_mlp_ensemble(train, val, cfg, seed=1, progress=False)
    lrs = [e["lr"] for e in hist_whole["epochs"]]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-4)
    state = tmp_path / "c.state"
    _, first = train_mlp_ensemble(train, val, cfg, seed=1, progress=False, state_path=state, time_budget_s=0.0)
    assert first["stopped"] == "time budget" and len(first["epochs"]) == 1
    resumed, hist = train_mlp_ensemble(train, val, cfg, seed=1, progress=False, state_path=state, resume=True)
    assert hist["epochs"] == hist_whole["epochs"]
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    longer = MLPEnsembleConfig(**{**cfg.__dict__, "epochs": 8})
    with pytest.raises(CheckpointError, match="config"):
        train_mlp_ensemble(train, val, longer, seed=1, progress=False, state_path=state, resume=True)
    with pytest.raises(ValueError, match="lr_schedule"):
        MLPEnsembleConfig(lr_schedule="step")


def test_time_budget_stops_after_an_epoch_and_keeps_the_best(tmp_path, small_datasets):
    """A budget of zero ends the run after its first epoch with the best model written so far
    ('time budget'), and the saved state resumes."""
    train, val = small_datasets
    cfg = MLPEnsembleConfig(ensemble_size=2, elites=1, hidden=16, layers=1, epochs=3, patience=10,
                            max_steps_per_epoch=2)
    state = tmp_path / "s.state"
    _, hist = train_mlp_ensemble(train, val, cfg, seed=0, progress=False, state_path=state, time_budget_s=0.0)
    assert hist["stopped"] == "time budget" and len(hist["epochs"]) == 1
    _, hist = train_mlp_ensemble(train, val, cfg, seed=0, progress=False, state_path=state, resume=True)
    assert hist["stopped"] == "epochs" and [e["epoch"] for e in hist["epochs"]] == [0, 1, 2]


def test_collect_with_a_learned_planner_keeps_what_mujoco_does(tmp_path, trained, hopper_env,
                                                              small_controller_config):
    """'ws collect --dynamics CHECKPOINT': the learned model plans, and the kept segments hold the
    simulator's states for the action sequences it ranked best (re-simulated from each segment's
    start), not the model's predictions of them; then 'ws train --init' fine-tunes the model on
    them joined to other data, keeping its normalisation."""
    from ws_mppi.collect import CollectConfig, collect
    from ws_sim.oracle import MuJoCoOracle

    model, _ = trained
    path = save_checkpoint(model, tmp_path / "m.pt")
    cfg = CollectConfig(train_episodes=1, full_episodes=0, val_episodes=1, max_steps=8, seed=7, dynamics=str(path))
    train, val, stats = collect(hopper_env, cfg, small_controller_config, nthread=1)
    assert train.attrs["labelled_by"] == "mujoco" and len(stats["oracle_returns_train"]) == 1
    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=1)
    sim_err, model_err = [], []
    try:
        for seg in list(train.segments())[:12]:
            start, acts = seg["observations"][0].astype(np.float64), seg["actions"][None].astype(np.float64)
            truth = oracle.rollout(start, acts)[0]
            pred = model.rollout(torch.as_tensor(start, dtype=torch.float32),
                                 torch.as_tensor(acts, dtype=torch.float32)).numpy()[0]
            sim_err.append(np.abs(truth - seg["observations"][1:]).max())
            model_err.append(np.abs(pred - seg["observations"][1:]).max())
    finally:
        oracle.close()
    assert max(sim_err) < 1e-3 < min(model_err), (sim_err, model_err)
    tuned, hist = train_mlp_ensemble(train, val, TINY, seed=0, progress=False, init=model)
    torch.testing.assert_close(tuned.out_std, model.out_std)
    assert one_step_errors(tuned, val)["model_mse"] < one_step_errors(model, val)["model_mse"]
    with pytest.raises(ValueError, match="architecture"):
        train_mlp_ensemble(train, val, MLPEnsembleConfig(ensemble_size=3, elites=2, hidden=32, layers=2),
                           init=model, progress=False)
