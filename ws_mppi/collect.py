"""Offline dynamics data from oracle MPPI rollouts (seed 003, Appendix C.5).

Oracle MPPI runs closed loop. At every control step the K sampled rollouts are ranked by
their MPPI cost and:

* training episodes keep the lowest-cost ``keep_train`` fraction (10% in the seed);
* a few extra episodes keep *all* sampled rollouts (diversity augmentation);
* validation episodes (other seeds) keep the lowest ``keep_val`` fraction (30%).

Each kept rollout becomes one segment ``s_0, a_0, s_1, ..., a_{H-1}, s_H`` of the dataset,
cut after its first unhealthy state (marked terminal), with Gymnasium rewards. The
dataset's channel metadata carries the value ranges seen in its data.

History prefix (``history > 0``): a trajectory world model plans from the executed history
(``ws_mppi.dynamics.SequenceDynamics``), so it should also learn from windows of *executed
history, then sampled rollout*. With ``history = Th`` every kept segment is prefixed with
the last ``Th`` executed transitions of its episode (fewer at the start of an episode), so
the segment reads ``s_{t-Th}, a_{t-Th}, ..., s_t`` (executed) then the rollout from ``s_t``.
The prefix transitions are real ones; a one-step model sees them as extra data.

Another planner's data (``dynamics`` a learned-model checkpoint): the planner plans with that
model and steps the simulator, the kept rollouts are the ones *it* ranks lowest, and every kept
action sequence is re-simulated in MuJoCo from the true state, so the segments hold what the
simulator does, not what the model predicted. This is data where a learned model's planner goes,
for aggregating it into the model's training set (DAgger for system identification, Ross and
Bagnell 2012; MBPO and PETS retrain on their own planner's data the same way).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ws_sim.channels import data_ranges
from ws_sim.dataset import TrajectoryDataset
from ws_sim.envs import StateEnv
from ws_sim.oracle import MuJoCoOracle, perturb_actions

from .config import ConfigError, ControllerConfig
from .dynamics import OracleDynamics
from .runner import make_controller

__all__ = ["CollectConfig", "collect", "corpus_mppi_policy", "perturbed_replays", "randomised_go1_episodes"]


@dataclasses.dataclass
class CollectConfig:
    """How many episodes of which kind, and what to keep of them."""

    train_episodes: int = 10
    full_episodes: int = 2
    val_episodes: int = 3
    keep_train: float = 0.1
    keep_val: float = 0.3
    max_steps: int = 1000
    seed: int = 0
    history: int = 0
    dynamics: str = "oracle"


def _segments_from_plan(env: StateEnv, state: np.ndarray, actions: np.ndarray, states: np.ndarray,
                        keep: np.ndarray, past_states: list | None = None,
                        past_actions: list | None = None) -> dict[str, list[np.ndarray]]:
    """Kept rollouts as segments, each after the executed ``past_states``/``past_actions``
    (``past_states[i]`` is the state ``past_actions[i]`` was executed in; the last leads to ``state``)."""
    task = env.task
    out = {k: [] for k in ("obs", "act", "rew", "nxt", "term", "tout")}
    ps = np.asarray(past_states if past_states else np.zeros((0, state.size)), dtype=np.float64)
    pa = np.asarray(past_actions if past_actions else np.zeros((0, actions.shape[2])), dtype=np.float64)
    for k in keep:
        nxt = np.concatenate([ps[1:], state[None], states[k]]) if len(ps) else states[k]
        obs = np.concatenate([ps, state[None], states[k][:-1]])
        act = np.concatenate([pa, actions[k]])
        healthy = np.array([task.is_healthy(s) for s in nxt])
        healthy[:len(ps)] = True  # the executed prefix led to the healthy state planned from
        fall = np.flatnonzero(~healthy)
        n = int(fall[0]) + 1 if fall.size else len(nxt)
        rew = np.array([task.reward(s, a, s2) for s, a, s2 in zip(obs[:n], act[:n], nxt[:n])])
        term = np.zeros(n, bool)
        tout = np.zeros(n, bool)
        if fall.size:
            term[-1] = True
        else:
            tout[-1] = True
        for key, val in zip(("obs", "act", "rew", "nxt", "term", "tout"), (obs[:n], act[:n], rew, nxt[:n], term, tout)):
            out[key].append(val)
    return out


def _run(episode, seeds: list[int], keep_frac: float, max_steps: int, desc: str, history: int = 0):
    """Closed-loop MPPI over ``seeds``; ``episode(seed) -> (env, controller, label)``, ``label`` the
    simulator's dynamics that re-simulates the kept sequences of a learned model's plan (None: the
    plan's own oracle states)."""
    parts = {k: [] for k in ("obs", "act", "rew", "nxt", "term", "tout")}
    returns = []
    bar = tqdm(total=len(seeds) * max_steps, desc=desc, unit="step", leave=False)
    for seed in seeds:
        env, controller, label = episode(seed)
        state, _ = env.reset(seed=seed)
        controller.reset(seed)
        ret = 0.0
        past_s, past_a = [], []
        for t in range(max_steps):
            action = controller.plan(state, t)
            res = controller.last
            kcount = res.costs.shape[0]
            nkeep = kcount if keep_frac >= 1 else max(1, math.ceil(keep_frac * kcount))
            order = np.argsort(res.costs.numpy(), kind="stable")[:nkeep]
            acts, states = res.actions.numpy().astype(np.float64), res.states.numpy().astype(np.float64)
            if label is not None:  # what the simulator does with the sequences the model's planner ranked best
                acts = acts[order]
                states = label.rollout(torch.as_tensor(state), torch.as_tensor(acts)).numpy().astype(np.float64)
                order = np.arange(len(acts))
            seg = _segments_from_plan(env, state, acts, states, order, past_s, past_a)
            for k in parts:
                parts[k].extend(seg[k])
            if history:
                past_s.append(state)
                past_a.append(np.asarray(action, dtype=np.float64))
                del past_s[:-history], past_a[:-history]
            state, reward, terminated, truncated, _ = env.step(action)
            ret += reward
            bar.update(1)
            if terminated or truncated:
                bar.update(max_steps - t - 1)
                break
        returns.append(ret)
    bar.close()
    return parts, returns


def _to_dataset(env: StateEnv, parts: dict, attrs: dict) -> TrajectoryDataset:
    """Concatenate segments; channel ``min``/``max`` become the ranges seen in the data."""
    if not parts["obs"]:
        raise RuntimeError("collection kept no rollout")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    states = data_ranges(env.state_channels, np.concatenate([cat["obs"], cat["nxt"]]))
    actions = data_ranges(env.action_channels, cat["act"])
    return TrajectoryDataset(cat["obs"].astype(np.float32), cat["act"].astype(np.float32), cat["rew"].astype(np.float32),
                             cat["nxt"].astype(np.float32), cat["term"], cat["tout"], states, actions, env.name, attrs)


def collect(env: StateEnv, config: CollectConfig, controller_config: ControllerConfig,
            nthread: int | None = None, env_for_seed=None) -> tuple[TrajectoryDataset, TrajectoryDataset, dict]:
    """Collect training and validation datasets with oracle MPPI (or another planner's, labelled
    by the simulator).

    Args:
        env: the environment (its channels and task describe the data).
        config: episode counts, kept fractions, step limit and seed. Episode ``i`` resets
            with seed ``config.seed + i``: training first, then the full-sample episodes,
            then validation, so the three never share a seed. ``config.dynamics``: what the
            planner plans with, ``"oracle"`` or a learned-model checkpoint (as
            :func:`ws_mppi.runner.make_controller`'s ``dynamics``); with a model, the kept action
            sequences are re-simulated in MuJoCo from the true state.
        controller_config: the MPPI settings.
        nthread: oracle rollout threads.
        env_for_seed: ``seed -> env`` for a fresh environment per episode, e.g. one draw of randomised
            physics (:func:`randomised_go1_episodes`); the oracle then plans with that episode's own
            model. Default: every episode in ``env``.

    Returns:
        ``(train, val, stats)``; ``stats`` holds the planner's episode returns.

    Raises:
        ConfigError: a kept fraction outside (0, 1], a negative history, no episode of a kind;
            ``dynamics`` ``"zero"`` (no plan to keep). (A ``ValueError``.)
        ws_worldmodel.checkpoint.CheckpointError, ChannelMismatchError: as ``make_controller``.
    """
    if not (0 < config.keep_train <= 1 and 0 < config.keep_val <= 1):
        raise ConfigError("keep_train and keep_val must be fractions in (0, 1]")
    if config.history < 0:
        raise ConfigError(f"history must be >= 0, got {config.history}")
    if config.train_episodes + config.full_episodes < 1 or config.val_episodes < 1:
        raise ConfigError("need at least one training and one validation episode")
    if config.dynamics == "zero":
        raise ConfigError("dynamics 'zero' plans nothing to keep: collect with 'oracle' or a model checkpoint")
    s0, n_tr, n_full = config.seed, config.train_episodes, config.full_episodes
    train_seeds = list(range(s0, s0 + n_tr))
    full_seeds = list(range(s0 + n_tr, s0 + n_tr + n_full))
    val_seeds = list(range(s0 + n_tr + n_full, s0 + n_tr + n_full + config.val_episodes))
    current: dict = {}  # the episode's environment and oracle planner, rebuilt per episode with env_for_seed

    def episode(seed: int):
        if env_for_seed is None and current:
            return current["env"], current["ctrl"], current["label"]
        if current:
            current["ctrl"].close()
            if current.get("label") is not None:
                current["label"].oracle.close()
        e = env if env_for_seed is None else env_for_seed(seed)
        label = None
        if config.dynamics != "oracle":  # the simulator says what the planner's kept sequences do
            label = OracleDynamics(MuJoCoOracle(e.model, e.frame_skip, nthread=nthread), e.physics_state)
        current.update(env=e, ctrl=make_controller(e, config.dynamics, controller_config, seed=config.seed,
                                                   nthread=nthread), label=label)
        return e, current["ctrl"], label

    try:
        h = config.history
        tr, r1 = _run(episode, train_seeds, config.keep_train, config.max_steps, "collect train", h)
        fu, r2 = _run(episode, full_seeds, 1.0, config.max_steps, "collect all-samples", h)
        va, r3 = _run(episode, val_seeds, config.keep_val, config.max_steps, "collect val", h)
    finally:
        if current:
            current["ctrl"].close()
            if current.get("label") is not None:
                current["label"].oracle.close()
    for k in tr:
        tr[k].extend(fu[k])
    attrs = {"collect": dataclasses.asdict(config), "controller": controller_config.to_dict()}
    if config.dynamics != "oracle":
        attrs["labelled_by"] = "mujoco"
    if env_for_seed is not None:
        attrs["episode_envs"] = getattr(env_for_seed, "describe", "one environment per episode")
    train = _to_dataset(env, tr, {**attrs, "split": "train", "seeds": train_seeds + full_seeds})
    val = _to_dataset(env, va, {**attrs, "split": "val", "seeds": val_seeds})
    stats = {"oracle_returns_train": r1, "oracle_returns_full": r2, "oracle_returns_val": r3}
    return train, val, stats


def perturbed_replays(data: TrajectoryDataset, env: StateEnv, noise: float, history: int = 0,
                      segments: int | None = None, seed: int = 0, include_original: bool = True,
                      nthread: int | None = None) -> TrajectoryDataset:
    """Each segment replayed in MuJoCo with its actions perturbed after the first ``history`` transitions.

    Data from a closed-loop planner let a trajectory model predict a segment's future from its history
    alone: the actions that follow are nearly a function of the states (the planner's), so a model can
    score well while ignoring them, and MPPI, which ranks action sequences by what the model says they
    change, then plans on noise (``ws eval open-loop --action-noise`` measures it). Replays break the
    tie: a segment keeps its first ``history`` transitions (the executed prefix ``ws collect --history``
    writes), and from the state after them its actions get Gaussian noise of ``noise`` half control
    ranges (clipped to the range) and MuJoCo says what follows, cut after the first unhealthy state
    like the collected rollouts (with the task's rewards). Every transition is the simulator's. A cheap
    stand-in for collecting with more exploration noise (DART, Laskey et al. 2017, perturbs a
    demonstrator's actions for the same reason).

    Args:
        data: full-state segments (``qpos, qvel``) of ``env``, e.g. ``ws collect``'s train split.
        env: the environment that made them (its model, frame skip, control range and task).
        noise: the noise's standard deviation in half control ranges (> 0).
        history: executed transitions kept unperturbed at the start of each segment (fewer if it is
            shorter; at least one perturbed action is left).
        segments: how many segments to replay, drawn without replacement (None: all).
        seed: the draw's and the noise's random seed.
        include_original: the result holds ``data`` followed by the replays (else the replays only);
            channel ranges are those seen in the result.
        nthread: MuJoCo rollout threads.

    Returns:
        A :class:`TrajectoryDataset` with ``attrs["perturbed_replays"]`` recording the settings.

    Raises:
        ConfigError: ``noise`` not a positive finite number, a negative ``history`` or ``segments`` below
            1, or data whose states are not ``env``'s ``qpos, qvel``. ChannelMismatchError: data of
            other channels.
    """
    if not (noise > 0 and math.isfinite(noise)):
        raise ConfigError(f"noise must be a positive number of half control ranges, got {noise}")
    if history < 0:
        raise ConfigError(f"history must be >= 0, got {history}")
    if segments is not None and segments < 1:
        raise ConfigError(f"segments must be >= 1, got {segments}")
    data.check_matches(env.state_channels, env.action_channels, "dataset")
    nx = env.model.nq + env.model.nv
    if data.observations.shape[1] != nx:
        raise ConfigError(f"replays restart MuJoCo from the data's states, which must be qpos, qvel ({nx} values); "
                          f"these have {data.observations.shape[1]}")
    bounds = data.segment_bounds()
    rng = np.random.default_rng(seed)
    chosen = (np.arange(len(bounds)) if segments is None or segments >= len(bounds)
              else np.sort(rng.choice(len(bounds), segments, replace=False)))
    parts = {k: [] for k in ("obs", "act", "rew", "nxt", "term", "tout")}
    oracle = MuJoCoOracle(env.model, env.frame_skip, nthread=nthread)
    try:
        for i in tqdm(chosen, desc="perturbed replays", unit="segment", leave=False):
            a, b = bounds[i]
            obs = data.observations[a:b].astype(np.float64)
            act = data.actions[a:b].astype(np.float64)
            p = min(history, len(act) - 1)
            acts = perturb_actions(env.model, act[p:], noise, rng)
            states = oracle.rollout(obs[p], acts[None])
            seg = _segments_from_plan(env, obs[p], acts[None], states, np.zeros(1, int), list(obs[:p]), list(act[:p]))
            for k in parts:
                parts[k].extend(seg[k])
    finally:
        oracle.close()
    if include_original:
        for k, v in (("obs", data.observations), ("act", data.actions), ("rew", data.rewards),
                     ("nxt", data.next_observations), ("term", data.terminals), ("tout", data.timeouts)):
            parts[k].insert(0, np.asarray(v, dtype=bool if k in ("term", "tout") else np.float64))
    settings = {"noise": noise, "history": history, "segments": int(len(chosen)), "seed": seed,
                "include_original": include_original, "from_segments": len(bounds)}
    return _to_dataset(env, parts, {**data.attrs, "perturbed_replays": settings})


def randomised_go1_episodes(randomisation=None, max_episode_steps: int | None = None):
    """``seed -> RandomisedGo1Env`` for :func:`collect`: each episode on its own draw of the sim-to-real
    ranges (:class:`ws_sim.randomisation.Go1Randomisation`).

    The draw of episode ``seed`` comes from ``numpy.random.default_rng([seed, 1])``, a stream that the
    randomised evaluation (``ws mppi randomised``, ``default_rng(seed)``) never uses, so training data
    never repeats an evaluation draw. Latency is in the executed steps only: the oracle's sampled
    rollouts (most of the data) step the episode's model without it.
    """
    from ws_sim.randomisation import Go1Randomisation, RandomisedGo1Env

    randomisation = randomisation or Go1Randomisation()

    def make(seed: int):
        draw = randomisation.sample(np.random.default_rng([int(seed), 1]))
        return RandomisedGo1Env(draw, max_episode_steps=max_episode_steps)

    make.describe = {"randomisation": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(randomisation).items()},
                     "draw_stream": "numpy.random.default_rng([seed, 1])"}
    return make


def corpus_mppi_policy(system):
    """The ``mppi`` behaviour of ``ws corpus build``: oracle MPPI for Gymnasium systems with a cost,
    with :data:`ws_mppi.config.SHORT_HORIZON` (not the expert planner of the defaults).

    Args:
        system: a corpus system (``ws_sim.corpus.make_system``).

    Returns:
        a policy ``(state, t) -> action`` or None where no MPPI cost exists here.
    """
    from ws_sim.envs import ENVIRONMENTS, StateEnv

    from .config import short_horizon_config

    if system.kind != "gym":
        return None
    short = {v: k for k, v in ENVIRONMENTS.items()}.get(system.spec.source.split(":", 1)[1])
    if short is None:
        return None
    env = StateEnv(system.env, short)
    # the short-horizon planner, as when the corpus was first built (the expert planner is 10-50x dearer)
    ctrl = make_controller(env, "oracle", short_horizon_config(), seed=0, nthread=1)
    return lambda state, t: ctrl.plan(state, t)
