"""TrajWorld and TDM baselines (seed 003 sec. 5): KV cache, causality, mixed-size batches, learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ws_sim.envs import make_env
from ws_worldmodel.data import SystemData, collate
from ws_worldmodel.tdm import TDM, TDMConfig
from ws_worldmodel.trajworld import TrajWorld, TrajWorldConfig
from ws_worldmodel.westworld import TrajectoryBatch

MODELS = {
    "trajworld": lambda: TrajWorld(TrajWorldConfig(d_model=32, n_heads=4, n_blocks=2, bins=32, mlp_hidden=64)),
    "tdm": lambda: TDM(TDMConfig(d_model=32, n_heads=4, n_blocks=2, bins=32, mlp_hidden=64)),
}


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def _batch(b=2, t=10, cs=5, ca=2, th=4, seed=0) -> TrajectoryBatch:
    g = torch.Generator().manual_seed(seed)
    return TrajectoryBatch(torch.rand(b, t, cs, generator=g), torch.rand(b, t, ca, generator=g),
                           torch.ones(b, cs, dtype=torch.bool), torch.ones(b, ca, dtype=torch.bool),
                           torch.zeros(b, cs, 4, dtype=torch.long), torch.zeros(b, ca, 4, dtype=torch.long), th)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_first_rollout_step_matches_teacher_forcing(name):
    model = _model(name)
    batch = _batch()
    logits = model(batch)
    assert logits.shape == (2, 9, 5, 32)
    pred = model.predict(batch)
    assert pred.shape == (2, 6, 5)
    assert torch.all((pred >= 0) & (pred <= 1))
    # s_history is predicted from true history only; TDM reads its own earlier channels of that step
    expected = torch.softmax(logits[:, batch.history - 1], dim=-1) @ model.bin_centers
    n = 5 if name == "trajworld" else 1
    torch.testing.assert_close(pred[:, 0, :n], expected[:, :n], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("th", [1, 4])
def test_kv_cache_rollout_equals_full_recomputation(name, th):
    model = _model(name)
    batch = _batch(th=th, seed=th)
    torch.testing.assert_close(model.predict(batch, use_cache=True), model.predict(batch, use_cache=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_rollout_is_causal_in_actions_and_ignores_future_states(name):
    """Predicted s_t may read a_{<t} only; the target states are never read."""
    model = _model(name)
    batch = _batch()
    th, t = batch.history, batch.states.shape[1]
    base = model.predict(batch)  # row j is s_{th + j}
    for k in (th, th + 2, t - 2):
        actions = batch.actions.clone()
        actions[:, k] += 0.7
        pred = model.predict(dataclasses.replace(batch, actions=actions))
        # a_k first influences s_{k+1}, i.e. row k + 1 - th
        torch.testing.assert_close(pred[:, :k + 1 - th], base[:, :k + 1 - th], rtol=0, atol=0)
        assert (pred[:, k + 1 - th:] - base[:, k + 1 - th:]).abs().max() > 1e-5
    last = batch.actions.clone()
    last[:, t - 1] += 0.7  # a_{T-1} leads past the window
    torch.testing.assert_close(model.predict(dataclasses.replace(batch, actions=last)), base, rtol=0, atol=0)
    future = batch.states.clone()
    future[:, th:] = torch.rand_like(future[:, th:])
    torch.testing.assert_close(model.predict(dataclasses.replace(batch, states=future)), base, rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_teacher_forced_logits_are_causal(name):
    """Row r of forward (predicting s_{r+1}) never reads a_{>r} nor s_{>r+1} (TDM: only s_{r+1,<c})."""
    model = _model(name)
    batch = _batch()
    base = model(batch)
    r = 5
    states, actions = batch.states.clone(), batch.actions.clone()
    states[:, r + 2:] += 0.3
    actions[:, r + 1:] += 0.3
    out = model(dataclasses.replace(batch, states=states, actions=actions))
    torch.testing.assert_close(out[:, :r + 1], base[:, :r + 1], rtol=0, atol=0)
    assert (out[:, r + 1:] - base[:, r + 1:]).abs().max() > 1e-4
    # s_{r+1, c} itself: TrajWorld's row r never reads it, TDM's row r reads it for channels > c only
    c = 2
    states = batch.states.clone()
    states[:, r + 1, c] += 0.3
    out = model(dataclasses.replace(batch, states=states))
    first_changed = c + 1 if name == "tdm" else batch.states.shape[2]
    torch.testing.assert_close(out[:, r, :first_changed], base[:, r, :first_changed], rtol=0, atol=0)
    if name == "tdm":
        assert (out[:, r, first_changed:] - base[:, r, first_changed:]).abs().max() > 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_mixed_size_batch_is_exact_under_padding(name):
    """A 12/3-channel window predicts the same alone and padded beside an 18/6-channel one."""
    model = _model(name)
    small = _batch(b=1, cs=12, ca=3, seed=1)
    big = _batch(b=1, cs=18, ca=6, seed=2)
    alone = model.predict(small)
    t = small.states.shape[1]
    states, actions = torch.zeros(2, t, 18), torch.zeros(2, t, 6)
    states[0, :, :12], actions[0, :, :3] = small.states[0], small.actions[0]
    states[1], actions[1] = big.states[0], big.actions[0]
    smask, amask = torch.ones(2, 18, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)
    smask[0, 12:], amask[0, 3:] = False, False
    mixed = TrajectoryBatch(states, actions, smask, amask, torch.zeros(2, 18, 4, dtype=torch.long),
                            torch.zeros(2, 6, 4, dtype=torch.long), small.history)
    out = model.predict(mixed)
    torch.testing.assert_close(out[0, :, :12], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], model.predict(big)[0], rtol=1e-5, atol=1e-5)
    assert torch.all(out[0, :, 12:] == 0)
    # the teacher-forced loss of the small sample does not see the padding either
    torch.testing.assert_close(model(mixed)[0, :, :12], model(small)[0], rtol=1e-5, atol=1e-5)
    # garbage in the padding changes nothing
    states[0, :, 12:], actions[0, :, 3:] = 5.0, -3.0
    garbage = dataclasses.replace(mixed, states=states, actions=actions)
    torch.testing.assert_close(model.predict(garbage), out, rtol=0, atol=0)
    torch.testing.assert_close(model.loss(garbage), model.loss(mixed), rtol=0, atol=0)


@pytest.fixture(scope="module")
def hopper_windows(small_datasets):
    train, _ = small_datasets
    return SystemData.from_dataset(train, make_env("hopper").model, length=8, stride=2)


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_falls_on_collected_hopper_windows(name, hopper_windows):
    """100 AdamW steps on real Hopper windows cut the future-state loss below 0.8 of its start."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = MODELS[name]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    n = len(hopper_windows)
    fixed = collate([(hopper_windows, int(i)) for i in rng.integers(n, size=32)], history=3)
    model.eval()
    with torch.no_grad():
        before = float(model.loss(fixed))
    model.train()
    for _ in range(100):
        loss = model.loss(collate([(hopper_windows, int(i)) for i in rng.integers(n, size=32)], history=3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(model.loss(fixed))
    assert after < 0.8 * before, (before, after)


def test_padded_mlp_ensemble_learns_and_is_exact_under_padding(small_datasets):
    """The multi-system MLPEnsemble: causal rollouts, padding-invariant, loss falls."""
    import numpy as np

    from ws_sim.envs import make_env
    from ws_worldmodel.data import SystemData, collate
    from ws_worldmodel.mlp_ensemble import PaddedMLPEnsemble, PaddedMLPEnsembleConfig

    train, _ = small_datasets
    sysd = SystemData.from_dataset(train, make_env("hopper").model, length=8, stride=2)
    torch.manual_seed(0)
    model = PaddedMLPEnsemble(PaddedMLPEnsembleConfig(max_state_dim=20, max_action_dim=6, ensemble_size=3,
                                                      hidden=64, layers=2))
    batch = collate([(sysd, i) for i in range(8)], history=3)
    model.eval()
    pred = model.predict(batch)
    assert pred.shape == (8, 5, 12)
    changed = batch.actions.clone()
    changed[:, 5] += 0.5  # a_5 first moves s_6, prediction row 3
    from ws_worldmodel.westworld import TrajectoryBatch

    pred2 = model.predict(TrajectoryBatch(batch.states, changed, batch.state_mask, batch.action_mask,
                                          batch.state_struct, batch.action_struct, 3))
    torch.testing.assert_close(pred2[:, :3], pred[:, :3])
    assert (pred2[:, 3:] - pred[:, 3:]).abs().max() > 1e-5
    # three extra padded channels full of garbage change nothing
    pad_s = torch.cat([batch.states, torch.full((8, 8, 3), 7.0)], dim=2)
    pad_m = torch.cat([batch.state_mask, torch.zeros(8, 3, dtype=torch.bool)], dim=1)
    pad_i = torch.cat([batch.state_struct, torch.zeros(8, 3, 4, dtype=torch.long)], dim=1)
    pred3 = model.predict(TrajectoryBatch(pad_s, batch.actions, pad_m, batch.action_mask, pad_i,
                                          batch.action_struct, 3))
    torch.testing.assert_close(pred3[..., :12], pred)
    assert torch.all(pred3[..., 12:] == 0)
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    with torch.no_grad():
        before = float(model.loss(batch))
    for _ in range(60):
        loss = model.loss(collate([(sysd, int(rng.integers(len(sysd)))) for _ in range(16)], history=3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(batch))
    assert after < before - 1.0, (before, after)
