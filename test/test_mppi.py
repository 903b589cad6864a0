"""MPPI (seed 003, App. D.3) and its costs, closed loop in real MuJoCo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws_mppi.config import ControllerConfig
from ws_mppi.costs import LocomotionCost, ReferenceTracking
from ws_mppi.mppi import MPPI, MPPIConfig
from ws_mppi.runner import ZeroController, make_controller, run_episode
from ws_sim.envs import NonFiniteStateError
from ws_sim.oracle import MuJoCoOracle


class DoubleIntegrator:
    """A real (analytic) dynamics: position and velocity driven by an acceleration."""

    state_dim, action_dim, dt = 2, 1, 0.1

    def rollout(self, state, actions):
        k, h, _ = actions.shape
        s = state.expand(k, 2).clone()
        out = torch.empty(k, h, 2)
        for t in range(h):
            s = torch.stack([s[:, 0] + self.dt * s[:, 1], s[:, 1] + self.dt * actions[:, t, 0]], 1)
            out[:, t] = s
        return out


def _quadratic_cost(state, actions, states, t0=0):
    return (states[..., 0] - 1.0).square().sum(1) + 0.1 * states[..., 1].square().sum(1)


def test_mppi_drives_a_double_integrator_to_its_target():
    mppi = MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0],
                MPPIConfig(horizon=20, samples=128, temperature=0.5, noise_sigma=1.0), seed=0)
    s = np.zeros(2)
    for _ in range(60):
        a = mppi.plan(s).action
        assert -2.0 <= a[0] <= 2.0
        s = np.array([s[0] + 0.1 * s[1], s[1] + 0.1 * a[0]])
    assert abs(s[0] - 1.0) < 0.1 and abs(s[1]) < 0.3


def test_mppi_update_is_the_importance_weighted_average():
    """Eqs. (15)-(16): with the nominal kept as sample 0 the new plan is sum_k w_k V_k."""
    mppi = MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0],
                MPPIConfig(horizon=5, samples=16, temperature=0.3, noise_sigma=0.5), seed=1)
    res = mppi.plan(np.zeros(2))
    w = torch.exp(-(res.costs - res.costs.min()) / 0.3)
    w = w / w.sum()
    torch.testing.assert_close(res.weights, w)
    expected = (w[:, None, None] * res.actions).sum(0)
    np.testing.assert_allclose(res.nominal, expected.numpy(), atol=1e-6)
    # warm start: the next nominal is the shifted plan
    np.testing.assert_allclose(mppi.nominal[:-1].numpy(), res.nominal[1:], atol=1e-7)


def test_locomotion_cost_is_the_negative_gymnasium_return(hopper_env):
    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=1)
    s0, _ = hopper_env.reset(seed=4)
    acts = np.random.default_rng(2).uniform(-0.3, 0.3, (1, 12, 3))
    states = oracle.rollout(s0, acts, physics_state=hopper_env.physics_state())
    rewards = []
    for t in range(12):
        _, r, term, _, _ = hopper_env.step(acts[0, t])
        rewards.append(r)
        assert not term
    cost = LocomotionCost(hopper_env.task)(torch.tensor(s0), torch.tensor(acts), torch.tensor(states))
    assert cost.item() == pytest.approx(-sum(rewards), rel=1e-9)


def test_cost_stops_accruing_after_a_fall_and_adds_the_penalty(hopper_env):
    task = hopper_env.task
    s0 = torch.zeros(12, dtype=torch.float64)
    s0[1] = 1.25
    states = s0.repeat(1, 4, 1)
    states[0, 1:, 1] = 0.5  # z below 0.7 from step 1 on: unhealthy
    states[0, :, 0] = torch.arange(1, 5) * 0.01
    acts = torch.zeros(1, 4, 3, dtype=torch.float64)
    c = LocomotionCost(task, termination_penalty=7.0)
    rewards, alive = c.step_rewards(s0, acts, states)
    assert alive[0].tolist() == [True, True, False, False]
    expected = -(rewards[0, 0] + rewards[0, 1]) + 7.0
    assert c(s0, acts, states).item() == pytest.approx(expected.item())


def test_reference_tracking_term_prefers_the_reference():
    from ws_sim.envs import make_env

    env = make_env("hopper")
    ref = np.tile(np.r_[0, 1.25, np.zeros(10)], (50, 1))
    w = np.r_[0, 1.0, np.ones(4), np.zeros(6)]
    c = LocomotionCost(env.task, reference=ReferenceTracking(ref, w, scale=10.0))
    s0 = torch.tensor(ref[0])
    near = torch.tensor(ref[None, 1:6])
    far = near.clone()
    far[..., 3] = 0.5
    acts = torch.zeros(1, 5, 3, dtype=torch.float64)
    assert c(s0, acts, far).item() - c(s0, acts, near).item() == pytest.approx(10.0 * 5 * 0.25)
    with pytest.raises(ValueError, match="reference"):
        ReferenceTracking(ref, w[:5])


def test_oracle_mppi_beats_zero_action_on_hopper(hopper_env, small_controller_config):
    """A short episode (80 steps): MPPI on MuJoCo itself must out-earn doing nothing."""
    from ws_sim.envs import make_env

    env = make_env("hopper", max_episode_steps=80)
    oracle = make_controller(env, "oracle", small_controller_config, seed=0, nthread=2)
    mppi = [run_episode(env, oracle, seed) for seed in (10, 11)]
    zero = [run_episode(env, ZeroController(env), seed) for seed in (10, 11)]
    oracle.close()
    for m, z in zip(mppi, zero):
        assert m.reward > z.reward + 20, (m.summary(), z.summary())
        assert m.forward_distance > z.forward_distance + 0.3
        assert len(m.latencies_s) == m.length
        # every step of these 80 was healthy (Gymnasium's info["reward_survive"]), and the summary says so
        assert m.healthy_steps == z.healthy_steps == 80 and m.summary()["healthy_steps"] == 80


def test_nan_state_never_reaches_the_planner():
    """A sensor fault (NaN in the state at step 3) stops the episode before planning on it."""
    import gymnasium as gym

    from ws_sim.envs import StateEnv

    class FaultyHopper(StateEnv):
        def step(self, action):
            state, *rest = super().step(action)
            if self.unwrapped._elapsed_steps_ws == 3:
                state = state.copy()
                state[7] = np.nan
            return (state, *rest)

    env = FaultyHopper(gym.make("Hopper-v5"), "hopper")
    calls = []

    class Recorder(ZeroController):
        def plan(self, state, t=0):
            calls.append(t)
            env.unwrapped._elapsed_steps_ws = t + 1
            return super().plan(state, t)

    with pytest.raises(NonFiniteStateError, match=r"channels \[7\]"):
        run_episode(env, Recorder(env), seed=0)
    assert calls == [0, 1, 2]


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="horizon"):
        MPPIConfig(horizon=0)
    with pytest.raises(ValueError, match="temperature"):
        MPPIConfig(temperature=0.0)


def test_reference_from_a_recorded_episode_is_tracked(tmp_path, hopper_env, small_controller_config):
    import dataclasses

    from ws_mppi.config import ConfigError
    from ws_mppi.runner import load_reference

    s, _ = hopper_env.reset(seed=0)
    states = np.tile(s, (30, 1))
    np.savez(tmp_path / "ref.npz", states=states)
    cfg = dataclasses.replace(small_controller_config, reference=str(tmp_path / "ref.npz"), reference_scale=2.0)
    ref = load_reference(hopper_env, cfg)
    assert ref.weights[0] == 0.0 and ref.weights[1] == 1.0 and ref.weights[-1] == pytest.approx(0.1)
    ctrl = make_controller(hopper_env, "oracle", cfg, seed=0, nthread=1)
    assert ctrl.mppi.cost.reference is not None
    ctrl.close()
    np.savez(tmp_path / "bad.npz", states=states[:, :5])
    with pytest.raises(ConfigError, match=r"expected finite \(T, 12\)"):
        load_reference(hopper_env, dataclasses.replace(cfg, reference=str(tmp_path / "bad.npz")))
    with pytest.raises(FileNotFoundError, match="reference trajectory"):
        load_reference(hopper_env, dataclasses.replace(cfg, reference=str(tmp_path / "none.npz")))
    # per-joint weights (seed 003's code gives Walker2d's that way); root x stays 0 whatever is given
    per_joint = dataclasses.replace(cfg, reference_pos_weight=[5.0, 1.0, 2.0, 3.0, 4.0, 6.0], reference_vel_weight=0.5)
    np.testing.assert_array_equal(load_reference(hopper_env, per_joint).weights, [0, 1, 2, 3, 4, 6] + [0.5] * 6)
    with pytest.raises(ConfigError, match="reference_pos_weight has 3 entries; hopper has 6"):
        load_reference(hopper_env, dataclasses.replace(cfg, reference_pos_weight=[1.0, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="reference_vel_weight must be a non-negative number"):
        ControllerConfig.from_dict({"reference_vel_weight": [1.0, -2.0]})


def test_filmed_oracle_episode_equals_the_unfilmed_one(tmp_path, small_controller_config):
    """The filmed controller plans from the physics of the environment it drives."""
    from ws_mppi.report import run_comparison

    runs = [run_comparison("hopper", ["oracle"], small_controller_config, episodes=1, seed=3, max_steps=25,
                           out_dir=tmp_path / f"v{video}", video=video, nthread=1, printer=lambda *_: None)
            for video in (True, False)]
    filmed, plain = (r["controllers"]["oracle"]["episodes_detail"][0] for r in runs)
    assert filmed["reward"] == plain["reward"] and filmed["length"] == plain["length"]
    assert "video" in runs[0] and "video" not in runs[1]


def test_oracle_plans_from_the_given_state_not_a_stale_environment(hopper_env):
    """Planning from a state other than the environment's must use that state."""
    from ws_mppi.dynamics import OracleDynamics

    oracle = MuJoCoOracle(hopper_env.model, hopper_env.frame_skip, nthread=1)
    hopper_env.reset(seed=0)
    dyn = OracleDynamics(oracle, hopper_env.physics_state)
    other = hopper_env.state.copy()
    other[1] += 0.3  # the torso 30 cm higher
    acts = torch.zeros(2, 3, 3)
    out = dyn.rollout(torch.tensor(other, dtype=torch.float32), acts)
    ref = oracle.rollout(other, acts.double().numpy())
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    oracle.close()


class RecordingIntegrator(DoubleIntegrator):
    """The double integrator, keeping every action batch it was asked to roll out."""

    def __init__(self):
        self.seen = []

    def rollout(self, state, actions):
        self.seen.append(actions.clone())
        return super().rollout(state, actions)


@pytest.mark.parametrize("gap", [1, 3, 7])
def test_warm_start_after_a_gap_of_n_steps_starts_with_the_old_plans_step_n(gap):
    """A node replans at whatever rate it reaches: the next cycle starts from the last plan shifted by the
    control steps elapsed since it was made, the tail from the prior (here a ramp, so any index error shows)."""
    prior = lambda t0, n: (0.01 * (t0 + np.arange(n)))[:, None]  # noqa: E731
    dyn = RecordingIntegrator()
    mppi = MPPI(dyn, _quadratic_cost, [-2.0], [2.0], MPPIConfig(horizon=10, samples=8, noise_sigma=0.5),
                seed=0, prior=prior)
    old = mppi.plan(np.zeros(2), 5).nominal
    assert not np.allclose(old, prior(5, 10), atol=1e-3)  # the plan moved away from the prior
    mppi.plan(np.zeros(2), 5 + gap)
    started_from = dyn.seen[-1][0].numpy()  # sample 0 is the unperturbed warm start
    np.testing.assert_allclose(started_from[:10 - gap], old[gap:], atol=1e-6)
    np.testing.assert_allclose(started_from[10 - gap:], prior(15, gap), atol=1e-6)


@pytest.mark.parametrize("plan_hz", [7.0, 120.0])
def test_plans_at_any_rate_keep_their_warm_start(plan_hz):
    """The Go1's 50 Hz control steps planned at 7 Hz (gaps of ~7 steps) and at 120 Hz (replans within one
    step): every cycle starts from the previous plan, never from the prior."""
    dt, h = 0.02, 15
    prior = lambda t0, n: np.zeros((n, 1))  # noqa: E731
    dyn = RecordingIntegrator()
    mppi = MPPI(dyn, _quadratic_cost, [-2.0], [2.0], MPPIConfig(horizon=h, samples=8, noise_sigma=0.5),
                seed=0, prior=prior)
    steps = [int(i / plan_hz / dt) for i in range(12)]
    assert (max(np.diff(steps)) >= 7) if plan_hz < 10 else (min(np.diff(steps)) == 0)
    last = None
    for t0 in steps:
        result = mppi.plan(np.zeros(2), t0)
        if last is not None:
            gap = t0 - last.t0
            np.testing.assert_allclose(dyn.seen[-1][0, :h - gap].numpy(), last.nominal[gap:], atol=1e-6)
        last = result


def test_a_minus_infinite_cost_gets_no_weight_and_all_non_finite_raises():
    """A diverged learned model can give a rollout the cost -inf; it must not take all the weight."""
    def cost(state, actions, states, t0=0):
        c = _quadratic_cost(state, actions, states)
        c[3], c[5], c[6] = -float("inf"), float("nan"), float("inf")
        return c

    mppi = MPPI(DoubleIntegrator(), cost, [-2.0], [2.0], MPPIConfig(horizon=5, samples=16, noise_sigma=0.5), seed=0)
    res = mppi.plan(np.zeros(2))
    assert res.weights[[3, 5, 6]].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(res.weights).all() and res.weights.sum().item() == pytest.approx(1.0)
    assert np.all(np.isfinite(res.nominal))

    before = mppi.nominal.clone()
    broken = MPPI(DoubleIntegrator(), lambda *a: torch.full((16,), -float("inf")), [-2.0], [2.0],
                  MPPIConfig(horizon=5, samples=16, noise_sigma=0.5), seed=0)
    with pytest.raises(FloatingPointError, match="non-finite cost"):
        broken.plan(np.zeros(2))
    torch.testing.assert_close(mppi.nominal, before)


@pytest.mark.parametrize("coeffs", [[0.5, 0.5, 0.0], [0.4, 0.6, 0.0], [1.0, 0.5, 0.3]])
def test_ar_noise_has_the_stated_autocorrelation_and_variance(coeffs):
    """The seed's AR filters (Hopper [0.5, 0.5, 0], Walker2d [0.4, 0.6, 0]) and an AR(2): away from the zero
    initial conditions, lag-1 autocorrelation b1 / (1 - b2) and the stationary variance of the docstring."""
    b0, b1, b2 = coeffs
    sigma = 0.7
    mppi = MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0],
                MPPIConfig(horizon=60, samples=4000, noise_sigma=sigma, noise="ar", ar_coeffs=coeffs), seed=0)
    e = mppi.sample_noise(4000)[:, 30:, 0].double()  # (K, 30) in the stationary regime
    rho1 = (e[:, 1:] * e[:, :-1]).mean() / e.var()
    var = b0 ** 2 * sigma ** 2 * (1 - b2) / ((1 + b2) * ((1 - b2) ** 2 - b1 ** 2))
    assert rho1.item() == pytest.approx(b1 / (1 - b2), abs=0.02)
    assert e.var().item() == pytest.approx(var, rel=0.05)
    white = MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0],
                 MPPIConfig(horizon=60, samples=4000, noise_sigma=sigma), seed=0).sample_noise(4000)[:, 30:, 0]
    assert abs(((white[:, 1:] * white[:, :-1]).mean() / white.var()).item()) < 0.02
    with pytest.raises(ValueError, match="unstable"):
        MPPIConfig(noise="ar", ar_coeffs=[1.0, 0.9, 0.2])


def test_smoothed_update_moves_a_step_size_of_the_way():
    """U <- U + alpha sum_k w_k eps_k: with the same noise, alpha = 0.4 moves 0.4 of the classic update."""
    def run(alpha):
        m = MPPI(DoubleIntegrator(), _quadratic_cost, [-50.0], [50.0],
                 MPPIConfig(horizon=5, samples=16, noise_sigma=0.5, step_size=alpha), seed=3)
        start = m.warm_start(0).numpy()
        return start, m.plan(np.zeros(2)).nominal

    start, full = run(1.0)
    _, part = run(0.4)
    np.testing.assert_allclose(part - start, 0.4 * (full - start), atol=1e-6)


def _falling_rollouts():
    """A healthy Hopper start and 3 six-step rollouts: falling at step 1 (torso at 0.5 m), at step 4, never."""
    s0 = torch.zeros(12, dtype=torch.float64)
    s0[1] = 1.25
    states = s0.repeat(3, 6, 1)
    states[0, 1:, 1] = 0.5
    states[1, 4:, 1] = 0.5
    return s0, torch.zeros(3, 6, 3, dtype=torch.float64), states


def test_fall_penalty_is_paid_per_remaining_horizon_step(hopper_env):
    """Falling at step 1 of 6 costs 4 remaining steps of penalty; falling at step 4 costs 1; no fall, none."""
    c = LocomotionCost(hopper_env.task, fall_penalty_per_step=10.0)
    s0, acts, states = _falling_rollouts()
    base = LocomotionCost(hopper_env.task)(s0, acts, states)
    np.testing.assert_allclose((c(s0, acts, states) - base).numpy(), [40.0, 10.0, 0.0])


def test_an_expert_gives_the_prior_the_noise_and_the_reference(tmp_path, hopper_env):
    """``expert: <folder>`` (the files ``ws expert export`` writes): the nominal starts from and its tail is
    filled with the expert's mean action, the noise variance is expert_noise_scale x the expert's action
    variance, and ``reference: expert`` tracks the folder's reference episode."""
    from ws_mppi.config import ConfigError, ControllerConfig

    rng = np.random.default_rng(0)
    s, _ = hopper_env.reset(seed=1)
    states, acts = [s], []
    for _ in range(30):
        a = rng.uniform(-0.3, 0.3, 3)
        s, *_ = hopper_env.step(a)
        states.append(s)
        acts.append(a)
    acts = np.array(acts, dtype=np.float32)
    np.savez(tmp_path / "episodes.npz", states_0=np.array(states, np.float32), actions_0=acts,
             action_mean=acts.mean(0) + np.float32(0.2), action_var=acts.var(0))
    np.savez(tmp_path / "reference.npz", states=np.array(states, np.float32))
    cfg = ControllerConfig.from_dict({"mppi": {"horizon": 6, "samples": 8}, "expert": str(tmp_path),
                                      "expert_noise_scale": 0.8, "reference": "expert"})
    ctrl = make_controller(hopper_env, "oracle", cfg, seed=0, nthread=1)
    mean = acts.mean(0) + 0.2
    np.testing.assert_allclose(ctrl.mppi.warm_start(0).numpy(), np.tile(mean, (6, 1)), atol=1e-6)
    np.testing.assert_allclose(ctrl.mppi.config.noise_sigma, np.sqrt(0.8 * acts.var(0)), rtol=1e-5)
    s0, _ = hopper_env.reset(seed=1)
    ctrl.plan(s0, 0)
    np.testing.assert_allclose(ctrl.mppi.warm_start(2).numpy()[-2:], np.tile(mean, (2, 1)), atol=1e-6)
    np.testing.assert_allclose(ctrl.mppi.cost.reference.reference, np.array(states, np.float32))
    ctrl.close()
    with pytest.raises(FileNotFoundError, match="ws expert train"):
        make_controller(hopper_env, "oracle", ControllerConfig.from_dict({"expert": str(tmp_path / "none")}))
    with pytest.raises(ConfigError, match="needs an expert"):
        ControllerConfig.from_dict({"reference": "expert"})


def test_policy_samples_are_the_policys_closed_loop_rollout():
    """``policy_samples``: sample 1 (after the nominal) carries the policy's actions run closed loop through the
    planner's dynamics; sample 2 is those plus the noise; with one sample the policy must be given."""
    gain = lambda s: np.array([2.0 * (1.0 - s[0]) - 1.5 * s[1]])  # noqa: E731  a PD law toward x = 1
    cfg = MPPIConfig(horizon=8, samples=16, temperature=0.5, noise_sigma=0.3, policy_samples=2)
    mppi = MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0], cfg, seed=0, policy=gain)
    s0 = np.array([0.2, -0.1])
    res = mppi.plan(s0)
    s, expected = s0.copy(), []
    for _ in range(8):
        a = np.clip(gain(s), -2, 2)
        expected.append(a)
        s = np.array([s[0] + 0.1 * s[1], s[1] + 0.1 * a[0]])
    np.testing.assert_allclose(res.actions[1].numpy(), np.array(expected), atol=1e-5)
    assert not np.allclose(res.actions[2].numpy(), np.array(expected), atol=1e-3)  # the noisy copy
    np.testing.assert_allclose(res.actions[0].numpy(), np.zeros((8, 1)), atol=1e-6)  # the nominal: the prior
    with pytest.raises(ValueError, match="needs a policy"):
        MPPI(DoubleIntegrator(), _quadratic_cost, [-2.0], [2.0], cfg)
    with pytest.raises(ValueError, match="policy_samples"):
        MPPIConfig(samples=4, policy_samples=4)


def test_nearest_alignment_indexes_the_reference_by_the_current_phase():
    """``align: nearest`` starts the reference at the row nearest the current state (weighted, root x ignored),
    ``time`` at the episode step; both clip at the reference's end."""
    t = np.arange(200, dtype=np.float32)
    ref = np.stack([t * 0.01, np.sin(0.2 * t), np.cos(0.2 * t)], 1)  # x, then a periodic gait
    w = np.array([0.0, 1.0, 1.0], np.float32)
    near = ReferenceTracking(ref, w, align="nearest")
    timed = ReferenceTracking(ref, w, align="time")
    state = ref[37] + np.array([5.0, 0.0, 0.0], np.float32)  # far ahead in x, at the phase of row 37
    idx = near.indices(state, t0=120, horizon=10)
    assert np.allclose(ref[idx[0] - 1, 1:], ref[37, 1:], atol=1e-4)  # row 37 or one a whole period later
    np.testing.assert_array_equal(np.diff(idx), 1)
    np.testing.assert_array_equal(timed.indices(state, t0=120, horizon=10), np.arange(121, 131))
    np.testing.assert_array_equal(timed.indices(state, t0=195, horizon=10)[-1], 199)
    with pytest.raises(ValueError, match="align"):
        ReferenceTracking(ref, w, align="phase")


def test_oracle_mppi_with_the_shipped_expert_keeps_hopper_up_past_where_zero_action_falls():
    """The shipped Hopper config (expert prior, noise, phase-aligned reference and the expert's actor as one
    sample), shrunk to H = 30 and K = 8 so the test stays short, with the seed's reference scale (1) and the
    linear fall cost (at H = 30 the shipped scale 0.1 and held cost fall at steps 170-220): 300 steps healthy,
    where zero action falls after about 150. (Full size, 1000 steps, 5 seeds: docs/control.md.)"""
    import dataclasses

    from ws_mppi.config import load_config
    from ws_sim.envs import make_env

    env = make_env("hopper", max_episode_steps=300)
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "mppi_hopper_long_expert.yaml")
    cfg = dataclasses.replace(cfg, mppi=dataclasses.replace(cfg.mppi, horizon=30, samples=8), reference_scale=1.0,
                              fall_penalty_mode="linear")
    zero = run_episode(env, ZeroController(env), seed=1)
    assert zero.terminated and zero.length < 200
    ctrl = make_controller(env, "oracle", cfg, seed=1, nthread=1)
    try:
        res = run_episode(env, ctrl, seed=1)
    finally:
        ctrl.close()
    assert not res.terminated and res.length == 300
    assert res.reward > 2.5 * 300  # hopping forward (the healthy bonus alone gives 1 per step)
    env.close()


def test_held_fall_penalty_is_the_seed_codes(hopper_env):
    """``held``: the fall step's cost plus p x r, repeated for the r remaining steps (seed 003's code), so a fall
    at step 1 of 6 (r = 4) adds p r (r + 1) + r c_fall, at step 4 (r = 1) p 2 + c_fall; no fall, nothing."""
    s0, acts, states = _falling_rollouts()
    base = LocomotionCost(hopper_env.task)
    held = LocomotionCost(hopper_env.task, fall_penalty_per_step=10.0, fall_penalty_mode="held")
    rewards, _ = base.step_rewards(s0, acts, states)
    c_fall = -rewards[[0, 1], [1, 4]].numpy()
    extra = (held(s0, acts, states) - base(s0, acts, states)).numpy()
    np.testing.assert_allclose(extra, [10 * 4 * 5 + 4 * c_fall[0], 10 * 1 * 2 + c_fall[1], 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="fall_penalty_mode"):
        LocomotionCost(hopper_env.task, fall_penalty_mode="quadratic")


def test_terminal_value_credits_only_rollouts_healthy_to_the_end(hopper_env):
    """``terminal_value``: a rollout healthy through the horizon is credited w V(s_H); one that falls, nothing."""
    s0 = torch.zeros(12, dtype=torch.float64)
    s0[1] = 1.25
    states = s0.repeat(2, 6, 1)
    states[0, -1, 6] = 0.5  # a distinct last state for the healthy rollout
    states[1, 3:, 1] = 0.5  # falls at step 3
    acts = torch.zeros(2, 6, 3, dtype=torch.float64)
    value = lambda s: 100.0 + 10.0 * s[:, 6]  # noqa: E731
    base = LocomotionCost(hopper_env.task)(s0, acts, states)
    with_v = LocomotionCost(hopper_env.task, terminal_value=value, terminal_value_weight=0.5)(s0, acts, states)
    np.testing.assert_allclose((with_v - base).numpy(), [-0.5 * 105.0, 0.0])


# --- named state views (issue 25): the costs read the state by channel name, bit-identical to the old slices ---

def _old_locomotion_cost(task, state, actions, states, termination_penalty=0.0, fall_penalty_per_step=0.0,
                         fall_penalty_mode="linear"):
    """LocomotionCost before issue 25, with its literal indices (``task.*_index`` and ``states[..., 2:]``)."""
    def healthy(s):
        z, ang = s[..., task.z_index], s[..., task.angle_index]
        ok = (z > task.healthy_z_range[0]) & (z < task.healthy_z_range[1])
        ok &= (ang > task.healthy_angle_range[0]) & (ang < task.healthy_angle_range[1])
        if task.healthy_state_range is not None:
            rest = s[..., 2:]
            ok &= ((rest > task.healthy_state_range[0]) & (rest < task.healthy_state_range[1])).all(-1)
        return ok
    k, h, _ = states.shape
    x = states[..., task.x_index]
    x_prev = torch.cat([state[task.x_index].expand(k, 1).to(x.dtype), x[:, :-1]], dim=1)
    hl = healthy(states)
    rewards = (task.forward_reward_weight * (x - x_prev) / task.dt + task.healthy_reward * hl.to(x.dtype)
               - task.ctrl_cost_weight * actions.square().sum(-1))
    alive = torch.ones_like(hl)
    alive[:, 1:] = torch.cumprod(hl[:, :-1].to(torch.int8), dim=1).bool()
    step_cost = -rewards
    cost = (step_cost * alive.to(step_cost.dtype)).sum(1)
    fell = ~(hl.all(1))
    cost = cost + termination_penalty * fell.to(cost.dtype)
    if fall_penalty_per_step:
        t_fall = torch.where(fell, (~hl).to(torch.int8).argmax(1), torch.full_like(fell, h - 1, dtype=torch.long))
        remain = (h - 1 - t_fall).to(cost.dtype)
        penalty = fall_penalty_per_step * remain
        if fall_penalty_mode == "held":
            penalty = penalty * (remain + 1) + remain * step_cost.gather(1, t_fall[:, None])[:, 0]
        cost = cost + torch.where(fell, penalty, torch.zeros_like(penalty))
    return cost


def _random_rollouts(env, k=64, h=12, scale=0.3, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    s0 = np.r_[env.data.qpos, env.data.qvel]
    states = s0 + scale * rng.standard_normal((k, h, s0.size))
    actions = rng.uniform(env.action_space.low, env.action_space.high, (k, h, env.action_space.shape[0]))
    return (torch.as_tensor(s0, dtype=dtype), torch.as_tensor(actions, dtype=dtype),
            torch.as_tensor(states, dtype=dtype))


@pytest.mark.parametrize("name", ["hopper", "walker2d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_locomotion_cost_with_named_layout_is_bit_identical_to_the_old_slices(name, dtype):
    from ws_sim.channels import StateLayout
    from ws_sim.envs import make_env

    env = make_env(name)
    layout = StateLayout.from_channels(env.state_channels, name)
    s0, acts, states = _random_rollouts(env, scale=0.15, dtype=dtype)
    for kw in [{}, {"termination_penalty": 50.0}, {"fall_penalty_per_step": 10.0},
               {"fall_penalty_per_step": 10.0, "fall_penalty_mode": "held", "termination_penalty": 7.0}]:
        old = _old_locomotion_cost(env.task, s0, acts, states, **kw)
        new = LocomotionCost(env.task, layout=layout, **kw)(s0, acts, states)
        default = LocomotionCost(env.task, **kw)(s0, acts, states)
        assert torch.equal(new, old) and torch.equal(default, old), kw
    healthy = LocomotionCost(env.task, layout=layout).healthy(states)
    assert 0 < int(healthy.sum()) < healthy.numel()  # the random states exercise both branches
    env.close()


def test_go1_cost_with_named_layout_is_bit_identical_to_the_old_slices():
    from ws_mppi.costs import Go1WalkCost
    from ws_sim.channels import StateLayout
    from ws_sim.envs import make_env

    env = make_env("go1")
    layout = StateLayout.from_channels(env.state_channels, "go1")
    for dtype in (torch.float32, torch.float64):
        s0, acts, states = _random_rollouts(env, scale=0.1, dtype=dtype)
        states[::3, 5:, 2] = 0.1  # some rollouts fall
        goal = np.array([3.0, 1.0])
        cost = Go1WalkCost(env.gait, env.dt, lambda: goal, v_des=0.4, layout=layout)
        t0 = 7
        # the old formula, literal slices
        p0 = s0[:2].to(dtype)
        d = torch.as_tensor(goal, dtype=dtype) - p0
        d_hat = d / d.norm().clamp_min(1e-6)
        normal = torch.stack([-d_hat[1], d_hat[0]])
        v, q, omega = states[..., 19:21], states[..., 3:7], states[..., 22:25]
        lateral = ((states[..., :2] - p0) * normal).sum(-1)
        u_ref = torch.as_tensor(env.gait.reference((t0 + np.arange(states.shape[1])) * env.dt), dtype=dtype)
        c = (4.0 * (v - 0.4 * d_hat).square().sum(-1) + 2.0 * lateral.square()
             + 50.0 * (states[..., 2] - 0.30).square() + 20.0 * (q[..., 1].square() + q[..., 2].square())
             + 5.0 * q[..., 3].square() + 0.05 * omega.square().sum(-1) + 1.0 * (acts - u_ref).square().sum(-1))
        down = states[..., 2] < 0.15
        alive = torch.ones_like(down)
        alive[:, 1:] = torch.cumprod((~down[:, :-1]).to(torch.int8), dim=1).bool()
        old = (c * alive.to(dtype)).sum(1) + 100.0 * down.any(1).to(dtype)
        assert torch.equal(cost(s0, acts, states, t0), old)
        assert torch.equal(Go1WalkCost(env.gait, env.dt, lambda: goal, v_des=0.4)(s0, acts, states, t0), old)  # default layout
    env.close()


def test_piper_cost_with_named_layout_is_bit_identical_to_the_old_slices():
    from ws_mppi.costs import PiperReachCost
    from ws_sim.channels import StateLayout
    from ws_sim.envs import make_env

    env = make_env("piper")
    layout = StateLayout.from_channels(env.state_channels, "piper")
    q_star = np.array([0.1, 1.2, -1.0, 0.2, 0.9, 1.5])
    for dtype in (torch.float32, torch.float64):
        s0, acts, states = _random_rollouts(env, scale=0.2, dtype=dtype)
        q_goal = torch.as_tensor(q_star, dtype=dtype)
        u_goal = torch.cat([q_goal, torch.tensor([0.035], dtype=dtype)])
        c = (10.0 * (states[..., :6] - q_goal).square().sum(-1) + 0.05 * states[..., 8:14].square().sum(-1)
             + 0.1 * (acts - u_goal).square().sum(-1))
        c[:, -1] = c[:, -1] * 5.0
        old = c.sum(1)
        assert torch.equal(PiperReachCost(lambda: q_star, layout=layout)(s0, acts, states), old)
        assert torch.equal(PiperReachCost(lambda: q_star)(s0, acts, states), old)
    env.close()


def test_state_layout_resolves_views_by_channel_name():
    from ws_sim.channels import MissingChannelError, StateLayout
    from ws_sim.envs import make_env

    views = {}
    for name in ("hopper", "walker2d", "go1", "piper"):
        env = make_env(name)
        views[name] = StateLayout.from_channels(env.state_channels, name)
        env.close()
    h, w, g, p = views["hopper"], views["walker2d"], views["go1"], views["piper"]
    assert (h.root_x, h.root_z, h.root_pitch, h.root_vel_x, h.non_root_xz) == (0, 1, 2, 6, slice(2, 12))
    assert (w.root_vel_x, w.non_root_xz) == (9, slice(2, 18))
    assert (g.base_pos, g.base_xy, g.base_z, g.base_quat) == (slice(0, 3), slice(0, 2), 2, slice(3, 7))
    assert (g.base_linvel, g.base_vel_xy, g.base_angvel) == (slice(19, 22), slice(19, 21), slice(22, 25))
    assert (p.arm_q, p.arm_qd) == (slice(0, 6), slice(8, 14))
    assert p.index("qvel/joint3") == 10 and p.span(["qpos/joint1", "qpos/joint3"]) == [0, 2]
    with pytest.raises(MissingChannelError, match=r"'go1'.*'qvel/rootx'.*forward velocity"):
        g.root_vel_x
    with pytest.raises(MissingChannelError, match=r"'piper'.*floating bases"):
        p.base_quat
    with pytest.raises(MissingChannelError, match="'hopper'.*no state channel 'qpos/nope'"):
        h.index("qpos/nope")


def test_make_controller_builds_the_costs_from_config_weights_and_layout():
    from ws_mppi.config import ConfigError, ControllerConfig, default_config
    from ws_mppi.costs import GO1_COST_DEFAULTS, PIPER_COST_DEFAULTS
    from ws_sim.envs import make_env

    go1 = make_env("go1")
    cost = make_controller(go1, "oracle", default_config("go1"), seed=0, nthread=1).mppi.cost
    assert cost.layout.env == "go1" and (cost.v_des, cost.z_ref, cost.fall_penalty) == (1.0, 0.30, 100.0)
    assert cost.w == dict(v=4.0, lat=2.0, z=50.0, tilt=20.0, yaw=5.0, w=0.05, u=1.0)
    cfg = default_config("go1")
    cfg.cost["w_z"] = 7.0
    assert make_controller(go1, "oracle", cfg, seed=0, nthread=1).mppi.cost.w["z"] == 7.0
    with pytest.raises(ConfigError, match=r"termination_penalty.*go1"):
        make_controller(go1, "oracle", ControllerConfig(termination_penalty=3.0), seed=0, nthread=1)
    with pytest.raises(ConfigError, match=r"w_nope.*go1"):
        make_controller(go1, "oracle", ControllerConfig(cost={"w_nope": 1.0}), seed=0, nthread=1)
    go1.close()
    # the constructors' defaults are the config's built-in weights
    import inspect

    from ws_mppi.costs import Go1WalkCost, PiperReachCost

    for cls, defaults in ((Go1WalkCost, GO1_COST_DEFAULTS), (PiperReachCost, PIPER_COST_DEFAULTS)):
        params = inspect.signature(cls).parameters
        assert {k: params[k].default for k in defaults} == defaults


def test_healthy_margin_charges_states_by_their_depth_into_the_band_and_nothing_else(hopper_env):
    """``healthy_margin=(dz, dangle)``, ``healthy_margin_weight=w``: a torso 2.5 cm into a 10 cm band above
    Hopper's lowest healthy height pays w (1/4)^2 per step, one pitched 0.075 rad into a 0.1 rad band
    w (3/4)^2; the states stay healthy (no fall, no penalty) and a state outside the bands pays nothing. With
    w = 0 the cost is Gymnasium's, bit for bit."""
    task = hopper_env.task
    s0 = torch.zeros(12, dtype=torch.float64)
    s0[1] = 1.25
    states = s0.repeat(3, 6, 1)
    states[0, 2:, 1] = task.healthy_z_range[0] + 0.075  # 0.025 into the 0.1 band
    states[1, 3:, 2] = task.healthy_angle_range[1] - 0.025  # 0.075 into the 0.1 band
    acts = torch.zeros(3, 6, 3, dtype=torch.float64)
    plain = LocomotionCost(task, fall_penalty_per_step=10.0)
    assert plain.healthy(states).all()
    off = LocomotionCost(task, fall_penalty_per_step=10.0, healthy_margin=(0.1, 0.1))
    assert torch.equal(off(s0, acts, states), plain(s0, acts, states))
    margin = LocomotionCost(task, fall_penalty_per_step=10.0, healthy_margin=(0.1, 0.1), healthy_margin_weight=8.0)
    assert torch.equal(margin.healthy(states), plain.healthy(states))
    extra = (margin(s0, acts, states) - plain(s0, acts, states)).numpy()
    np.testing.assert_allclose(extra, [4 * 8.0 * 0.25 ** 2, 3 * 8.0 * 0.75 ** 2, 0.0], atol=1e-9)
    # a state past the range's end is a fall; its band depth is clipped to 1 at the fall step
    states[2, 4:, 1] = task.healthy_z_range[0] - 0.5
    np.testing.assert_allclose(margin.margin_cost(states[2, 4]).item(), 8.0)
    for bad in ((-0.1, 0.0), (0.1,), (float("nan"), 0.0), "0.1 0.1"):
        with pytest.raises(ValueError, match="healthy_margin must be two finite numbers"):
            LocomotionCost(task, healthy_margin=bad)
    with pytest.raises(ValueError, match="angle bands of 0.2 overlap"):
        LocomotionCost(task, healthy_margin=(0.0, 0.2))  # Hopper's pitch range is (-0.2, 0.2)
    with pytest.raises(ValueError, match="healthy_margin_weight must be a finite number"):
        LocomotionCost(task, healthy_margin=(0.1, 0.1), healthy_margin_weight=-1.0)


def test_healthy_margin_in_the_config_and_on_the_command_line(tmp_path):
    """``healthy_margin(_weight):`` in the YAML and ``ws mppi run --healthy-margin(-weight)`` share one check; the
    Go1 refuses them."""
    import subprocess
    import sys

    from ws_mppi.config import ConfigError

    cfg = ControllerConfig.from_dict({"healthy_margin": [0.1, 0.15], "healthy_margin_weight": 10})
    assert cfg.healthy_margin == [0.1, 0.15] and cfg.healthy_margin_weight == 10.0
    with pytest.raises(ConfigError, match="healthy_margin must be two finite numbers"):
        ControllerConfig.from_dict({"healthy_margin": [0.1, -1]})
    with pytest.raises(ConfigError, match="healthy_margin_weight must be a finite number"):
        ControllerConfig.from_dict({"healthy_margin_weight": "ten"})
    with pytest.raises(ConfigError, match="healthy_margin"):
        cfg.validate_for("go1")
    r = subprocess.run([sys.executable, "-m", "ws_cli.main", "mppi", "run", "--env", "hopper", "--dynamics", "oracle",
                        "--healthy-margin", "0.1", "inf", "--episodes", "1", "--max-steps", "1", "--no-video",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "healthy_margin must be two finite numbers" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "ws_cli.main", "mppi", "run", "--env", "hopper", "--dynamics", "oracle",
                        "--healthy-margin-weight", "-2", "--episodes", "1", "--max-steps", "1", "--no-video",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "healthy_margin_weight must be a finite number" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_no_termination_runs_a_fallen_hopper_to_the_step_limit(tmp_path):
    """``ws mppi run --no-termination`` (seed 003's Table 3 protocol): zero action, which falls before step 150
    with termination on, runs all 200 steps, and report.json says termination was off; the Go1 refuses it
    before anything is written."""
    import json
    import subprocess
    import sys

    from ws_sim.envs import make_env

    lengths = {}
    for term in (True, False):
        env = make_env("hopper", max_episode_steps=200, terminate_when_unhealthy=term)
        env.reset(seed=0)
        n, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(np.zeros(3))
            n, done = n + 1, terminated or truncated
        lengths[term] = (n, terminated)
        env.close()
    assert lengths[True][0] < 150 and lengths[True][1]
    assert lengths[False] == (200, False)
    with pytest.raises(ValueError, match="terminate_when_unhealthy=False is for Hopper and Walker2d"):
        make_env("go1", terminate_when_unhealthy=False)
    cmd = [sys.executable, "-m", "ws_cli.main", "mppi", "run", "--dynamics", "zero", "--compare", "", "--episodes", "1",
           "--max-steps", "200", "--no-video", "--no-termination"]
    r = subprocess.run(cmd + ["--out", str(tmp_path / "h")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "h" / "report.json").read_text())
    assert rep["terminate_when_unhealthy"] is False
    assert rep["controllers"]["zero"]["episodes_detail"][0]["length"] == 200
    r = subprocess.run(cmd + ["--env", "go1", "--out", str(tmp_path / "g")], capture_output=True, text=True)
    assert r.returncode != 0 and "terminate_when_unhealthy=False is for Hopper and Walker2d" in r.stderr, r.stderr
    assert not (tmp_path / "g").exists()
