"""The fused MLPEnsemble rollout (stacked elite weights, one call per MPPI cycle) gives the
same states, and MPPI the same plans, as the per-step ``predict`` loop it replaces."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ws_mppi.costs import LocomotionCost
from ws_mppi.dynamics import LearnedDynamics
from ws_mppi.mppi import MPPI, MPPIConfig
from ws_worldmodel.checkpoint import DEFAULT_CHECKPOINTS, load_checkpoint
from ws_worldmodel.mlp_ensemble import MLPEnsemble, MLPEnsembleConfig

ATOL = 1e-5


def _reference_predict(model, state, action):
    """``MLPEnsemble.predict`` as it was before the fused rollout (kept here verbatim, so a
    later change of ``predict`` cannot move the reference with it)."""
    x = (torch.cat([state[..., model.input_state_idx], action], dim=-1) - model.in_mean) / model.in_std
    w = [layer.weight[model.elite_idx] for layer in model.hidden_layers]
    b = [layer.bias[model.elite_idx] for layer in model.hidden_layers]
    h = x.expand(len(model.elite_idx), -1, -1)
    for wi, bi in zip(w, b):
        h = F.silu(torch.baddbmm(bi, h, wi))
    out = torch.baddbmm(model.head.bias[model.elite_idx], h, model.head.weight[model.elite_idx])
    mean = out[..., : model.state_dim].mean(0)
    return state + mean * model.out_std + model.out_mean


@torch.no_grad()
def _reference_rollout(model, state, actions):
    """The old ``LearnedDynamics.rollout``: a Python loop over the horizon."""
    k, h, _ = actions.shape
    s = state.to(actions.dtype)
    s = s.expand(k, -1) if s.dim() == 1 else s
    out = actions.new_empty(k, h, model.state_dim)
    for t in range(h):
        s = _reference_predict(model, s, actions[:, t])
        out[:, t] = s
    return out


@pytest.fixture(scope="module")
def hopper_model():
    return load_checkpoint(DEFAULT_CHECKPOINTS["hopper"])


def _start_state(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 0.1 * torch.randn(model.state_dim, generator=g)
    s[1] += 1.25  # a standing hopper's height (harmless for other systems)
    return s


@pytest.mark.parametrize("system", ["hopper", "go1"])
def test_fused_rollout_equals_the_per_step_predict_loop_on_shipped_weights(system):
    model = load_checkpoint(DEFAULT_CHECKPOINTS[system])
    g = torch.Generator().manual_seed(1)
    k, h = 64, 20
    actions = torch.rand(k, h, model.action_dim, generator=g) * 2 - 1
    s0 = _start_state(model)
    ref = _reference_rollout(model, s0, actions)
    got = model.rollout(s0, actions)
    assert got.shape == (k, h, model.state_dim) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=ATOL)
    # a random batch of distinct start states, one per sequence
    starts = s0 + 0.05 * torch.randn(k, model.state_dim, generator=g)
    torch.testing.assert_close(model.rollout(starts, actions), _reference_rollout(model, starts, actions),
                               rtol=0, atol=ATOL)
    # predict itself is unchanged
    torch.testing.assert_close(model.predict(starts, actions[:, 0]), _reference_predict(model, starts, actions[:, 0]),
                               rtol=0, atol=0)


def test_learned_dynamics_fused_and_stepwise_agree(hopper_model):
    g = torch.Generator().manual_seed(2)
    actions = torch.rand(64, 20, 3, generator=g) * 2 - 1
    s0 = _start_state(hopper_model, 3)
    fused, stepwise = LearnedDynamics(hopper_model), LearnedDynamics(hopper_model, fused=False)
    assert fused._fused is not None and stepwise._fused is None
    torch.testing.assert_close(fused.rollout(s0, actions), stepwise.rollout(s0, actions), rtol=0, atol=ATOL)
    torch.testing.assert_close(fused.rollout(s0, actions), _reference_rollout(hopper_model, s0, actions),
                               rtol=0, atol=ATOL)
    # a one-step model without its own rollout still works through predict
    class OneStep:
        state_dim, action_dim = 12, 3

        def predict(self, s, a):
            return _reference_predict(hopper_model, s, a)

    torch.testing.assert_close(LearnedDynamics(OneStep()).rollout(s0, actions), stepwise.rollout(s0, actions),
                               rtol=0, atol=0)


def test_mppi_with_fused_dynamics_makes_the_same_plans(hopper_model, hopper_env):
    cost = LocomotionCost(hopper_env.task, termination_penalty=50.0)
    cfg = MPPIConfig(horizon=20, samples=64, temperature=0.1, noise_sigma=0.5)
    low, high = hopper_env.action_space.low, hopper_env.action_space.high
    new = MPPI(LearnedDynamics(hopper_model), cost, low, high, cfg, seed=7)
    old = MPPI(LearnedDynamics(hopper_model, fused=False), cost, low, high, cfg, seed=7)
    state, _ = hopper_env.reset(seed=5)
    for t0 in range(4):  # consecutive cycles: the warm start carries the plans forward
        a, b = new.plan(state, t0), old.plan(state, t0)
        np.testing.assert_allclose(a.nominal, b.nominal, rtol=0, atol=ATOL)
        np.testing.assert_allclose(a.action, b.action, rtol=0, atol=ATOL)
        np.testing.assert_allclose(a.predicted_states, b.predicted_states, rtol=0, atol=ATOL)
        torch.testing.assert_close(a.states, b.states, rtol=0, atol=ATOL)
        torch.testing.assert_close(a.costs, b.costs, rtol=0, atol=ATOL)
        torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=ATOL)
        state, *_ = hopper_env.step(a.action)


def test_prepared_weights_follow_changes_of_the_model(hopper_model):
    model = copy.deepcopy(hopper_model)
    g = torch.Generator().manual_seed(4)
    actions = torch.rand(16, 6, 3, generator=g) * 2 - 1
    s0 = _start_state(model, 5)
    first = model.rollout(s0, actions)
    cache = model._fast_cache
    assert model.rollout(s0, actions) is not None and model._fast_cache is cache  # reused while nothing changes

    with torch.no_grad():  # an in-place weight update (an optimiser step)
        model.hidden_layers[2].weight.mul_(1.05)
    changed = model.rollout(s0, actions)
    assert not torch.allclose(changed, first)
    torch.testing.assert_close(changed, _reference_rollout(model, s0, actions), rtol=0, atol=ATOL)

    model.elite_idx.copy_(torch.tensor([1, 3, 0]))  # another elite set
    torch.testing.assert_close(model.rollout(s0, actions), _reference_rollout(model, s0, actions), rtol=0, atol=ATOL)

    model.load_state_dict(hopper_model.state_dict())  # back to the shipped weights
    torch.testing.assert_close(model.rollout(s0, actions), first, rtol=0, atol=0)

    with torch.no_grad():
        model.out_std.mul_(2.0)  # statistics are part of the prepared tensors too
    torch.testing.assert_close(model.rollout(s0, actions), _reference_rollout(model, s0, actions), rtol=0, atol=ATOL)

    again = pickle.loads(pickle.dumps(model))  # the cache is not pickled; rebuilt on demand
    assert "_fast_cache" not in again.__dict__
    torch.testing.assert_close(again.rollout(s0, actions), model.rollout(s0, actions), rtol=0, atol=0)


def test_other_architectures_dtypes_and_a_gathered_state_index(hopper_model):
    cfg = MLPEnsembleConfig(ensemble_size=4, elites=2, hidden=32, layers=2)
    torch.manual_seed(0)
    model = MLPEnsemble(hopper_model.state_channels, hopper_model.action_channels, cfg)
    with torch.no_grad():
        model.in_mean.normal_()
        model.in_std.uniform_(0.5, 2.0)
        model.out_mean.normal_(0, 0.01)
        model.out_std.uniform_(0.01, 0.1)
    model.elite_idx.copy_(torch.tensor([3, 1]))
    g = torch.Generator().manual_seed(6)
    actions = torch.rand(8, 5, 3, generator=g) * 2 - 1
    s0 = _start_state(model, 7)
    torch.testing.assert_close(model.rollout(s0, actions), _reference_rollout(model, s0, actions), rtol=0, atol=ATOL)

    model.input_state_idx.copy_(torch.tensor([0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]))  # not one slice: gathered
    torch.testing.assert_close(model.rollout(s0, actions), _reference_rollout(model, s0, actions), rtol=0, atol=ATOL)

    model64 = copy.deepcopy(model).double()
    got = model64.rollout(s0.double(), actions.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _reference_rollout(model64, s0.double(), actions.double()), rtol=0, atol=1e-12)

    with pytest.raises(ValueError, match="state must be"):
        model.rollout(torch.zeros(3, 12), actions)


@pytest.mark.parametrize("system", ["hopper", "walker2d", "go1"])
def test_bfloat16_rollout_predicts_each_change_to_about_one_percent(system):
    """``precision="bfloat16"``: the layers in bfloat16, the state summed in float32. Each step's
    predicted change stays within a few percent of float32's, and the states stay float32."""
    model = load_checkpoint(DEFAULT_CHECKPOINTS[system])
    g = torch.Generator().manual_seed(4)
    actions = torch.rand(256, 5, model.action_dim, generator=g) * 2 - 1
    s0 = _start_state(model)
    exact = model.rollout(s0, actions)
    low = model.rollout(s0, actions, precision="bfloat16")
    assert low.dtype == torch.float32 and low.shape == exact.shape
    steps = torch.cat([s0.expand(256, 1, -1), exact], 1).diff(dim=1)  # float32's change per step
    err = (low - exact).diff(dim=1, prepend=torch.zeros(256, 1, model.state_dim))  # what bfloat16 adds per step
    rel = err.norm(dim=-1) / steps.norm(dim=-1)
    assert float(rel.median()) < 0.03 and float(rel.max()) < 0.2, (float(rel.median()), float(rel.max()))
    assert float(rel.median()) > 1e-4  # it did run in bfloat16 (float32 would agree to 1e-6)
    with pytest.raises(ValueError, match="precision"):
        model.rollout(s0, actions, precision="float16")
    with pytest.raises(ValueError, match="float32 actions"):
        model.rollout(s0.double(), actions.double(), precision="bfloat16")


def test_bfloat16_planner_is_chosen_by_config_and_refused_without_a_fused_model(hopper_model):
    from ws_mppi.config import ConfigError, ControllerConfig

    dyn = LearnedDynamics(hopper_model, precision="bfloat16", emulated_bfloat16=True)
    s0 = _start_state(hopper_model)
    actions = torch.rand(8, 3, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    torch.testing.assert_close(dyn.rollout(s0, actions), hopper_model.rollout(s0, actions, precision="bfloat16"),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="fused rollout"):
        LearnedDynamics(hopper_model, fused=False, precision="bfloat16")
    with pytest.raises(ValueError, match="precision"):
        LearnedDynamics(hopper_model, precision="half")
    assert ControllerConfig.from_dict({"model_precision": "bfloat16"}).model_precision == "bfloat16"
    with pytest.raises(ConfigError, match="model_precision"):
        ControllerConfig.from_dict({"model_precision": "int8"})


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_falls_back_to_float32_with_a_warning_where_the_cpu_would_emulate_it(hopper_model, monkeypatch,
                                                                                       caplog, native):
    """A planner configured for bfloat16 on a CPU without bfloat16 matmul units (where emulation made it 20x
    slower than float32) runs the model in float32 and says so; with the units it runs bfloat16."""
    import ws_mppi.dynamics as dynamics

    monkeypatch.setattr(dynamics, "native_bfloat16", lambda: native)
    s0 = _start_state(hopper_model)
    actions = torch.rand(8, 3, 3, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with caplog.at_level("WARNING", logger="ws_mppi.dynamics"):
        dyn = LearnedDynamics(hopper_model, precision="bfloat16")
    assert dyn.requested_precision == "bfloat16"
    if native:
        assert dyn.precision == "bfloat16" and not caplog.records
        torch.testing.assert_close(dyn.rollout(s0, actions), hopper_model.rollout(s0, actions, precision="bfloat16"),
                                   rtol=0, atol=0)
    else:
        assert dyn.precision == "float32"
        assert "no bfloat16 matmul units" in caplog.text and "float32" in caplog.text
        torch.testing.assert_close(dyn.rollout(s0, actions), hopper_model.rollout(s0, actions), rtol=0, atol=0)
    assert isinstance(dynamics.native_bfloat16(), bool)


def test_disagreement_is_reported_without_changing_the_rollout_and_grows_off_the_data(hopper_model, hopper_env):
    """The elites' disagreement comes with the same states as a plain rollout; at step 0 it is the
    variance across elites of their normalised predicted changes (computed here by hand); it is
    small from a state of the data and orders of magnitude larger from one no episode reached."""
    g = torch.Generator().manual_seed(4)
    actions = torch.rand(32, 10, 3, generator=g) * 2 - 1
    state, _ = hopper_env.reset(seed=1)
    s0 = torch.as_tensor(state, dtype=torch.float32)
    d = torch.full((32, 10), float("nan"))
    states = hopper_model.rollout(s0, actions, disagreement=d)
    assert torch.equal(states, hopper_model.rollout(s0, actions)) and bool(torch.isfinite(d).all())
    m = hopper_model
    x = (torch.cat([s0.expand(32, -1)[:, m.input_state_idx], actions[:, 0]], -1) - m.in_mean) / m.in_std
    h = x.expand(len(m.elite_idx), -1, -1)
    for layer in m.hidden_layers:
        h = F.silu(torch.baddbmm(layer.bias[m.elite_idx], h, layer.weight[m.elite_idx]))
    change = torch.baddbmm(m.head.bias[m.elite_idx], h, m.head.weight[m.elite_idx])[..., : m.state_dim]
    torch.testing.assert_close(d[:, 0], change.var(0, unbiased=False).mean(-1), rtol=1e-4, atol=1e-7)
    far = s0.clone()
    far[6:] += 8.0  # every joint and root velocity 8 units above a standing start
    d_far = torch.empty(32, 10)
    hopper_model.rollout(far, actions, disagreement=d_far)
    assert float(d_far[:, 0].mean()) > 100 * float(d[:, 0].mean()), (d_far[:, 0].mean(), d[:, 0].mean())
    with pytest.raises(ValueError, match="disagreement"):
        hopper_model.rollout(s0, actions, disagreement=torch.empty(32, 9))


def test_mppi_adds_the_weighted_disagreement_to_each_rollouts_cost(hopper_model, hopper_env):
    """With the same seed the planner samples the same sequences; with a disagreement weight each
    rollout's cost is the plain cost plus the weight times its summed disagreement."""
    cost = LocomotionCost(hopper_env.task, termination_penalty=50.0)
    cfg = MPPIConfig(horizon=10, samples=32, temperature=0.1, noise_sigma=0.5)
    low, high = hopper_env.action_space.low, hopper_env.action_space.high
    plain_dyn, pess_dyn = LearnedDynamics(hopper_model), LearnedDynamics(hopper_model, disagreement_weight=30.0)
    state, _ = hopper_env.reset(seed=2)
    plain = MPPI(plain_dyn, cost, low, high, cfg, seed=3).plan(state, 0)
    pess = MPPI(pess_dyn, cost, low, high, cfg, seed=3).plan(state, 0)
    assert plain_dyn.last_penalty is None and torch.equal(plain.actions, pess.actions)
    d = torch.empty(32, 10)
    hopper_model.rollout(torch.as_tensor(state, dtype=torch.float32), plain.actions, disagreement=d)
    torch.testing.assert_close(pess.costs - plain.costs, 30.0 * d.sum(1), rtol=1e-4, atol=1e-4)
    assert float(pess_dyn.last_penalty.min()) > 0
    with pytest.raises(ValueError, match="disagreement_weight"):
        LearnedDynamics(hopper_model, disagreement_weight=-1.0)
    with pytest.raises(ValueError, match="disagreement_weight"):
        LearnedDynamics(hopper_model, fused=False, disagreement_weight=1.0)
    from ws_mppi.config import ConfigError, ControllerConfig

    assert ControllerConfig.from_dict({"disagreement_weight": 3}).disagreement_weight == 3
    for bad in (-1.0, "high", True):
        with pytest.raises(ConfigError, match="disagreement_weight"):
            ControllerConfig.from_dict({"disagreement_weight": bad})
