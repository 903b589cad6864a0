"""Closed-loop episodes: a controller drives a :class:`ws_sim.envs.StateEnv`.

Controllers share one method, ``plan(state, t) -> action``; MPPI (oracle or learned
dynamics) and the zero-action baseline are built by :func:`make_controller`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ws_sim.channels import ChannelMismatchError, StateLayout, check_channels_match
from ws_sim.envs import StateEnv, check_state
from ws_sim.oracle import MuJoCoOracle

from .config import ControllerConfig
from .costs import LocomotionCost, ReferenceTracking
from .dynamics import LearnedDynamics, OracleDynamics, SequenceDynamics
from .mppi import MPPI

__all__ = ["ZeroController", "MPPIController", "make_controller", "run_episode", "EpisodeResult",
           "read_reference_states"]


class ZeroController:
    """The zero-action baseline (actions at the middle of the range)."""

    name = "zero"

    def __init__(self, env: StateEnv):
        neutral = getattr(env, "neutral_action", None)  # position-controlled robots hold their pose
        mid = (env.action_space.low + env.action_space.high) / 2
        self.action = np.asarray(mid if neutral is None else neutral, dtype=np.float64)

    def reset(self, seed: int | None = None) -> None:
        pass

    def plan(self, state: np.ndarray, t: int = 0) -> np.ndarray:
        return self.action.copy()

    def close(self) -> None:
        pass


class MPPIController:
    """MPPI on a dynamics model; ``plan`` returns the action to execute now."""

    def __init__(self, name: str, mppi: MPPI, closer=None):
        self.name = name
        self.mppi = mppi
        self._closer = closer
        self.last = None

    def reset(self, seed: int | None = None) -> None:
        self.mppi.reset(seed)
        if hasattr(self.mppi.dynamics, "reset"):
            self.mppi.dynamics.reset()

    def plan(self, state: np.ndarray, t: int = 0) -> np.ndarray:
        self.last = self.mppi.plan(state, t)
        return self.last.action.astype(np.float64)

    def observe(self, state: np.ndarray, action: np.ndarray) -> None:
        """Report an executed transition (history-conditioned dynamics keep it)."""
        if hasattr(self.mppi.dynamics, "observe"):
            self.mppi.dynamics.observe(state, action)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


def read_reference_states(path: str | Path) -> np.ndarray:
    """The ``(T, nq + nv)`` states ``[qpos, qvel]`` of a reference trajectory file.

    Accepted (no pickled objects are read):

    * ``.npz`` with ``states`` ``(T, nq + nv)`` (``ws mppi run``'s states_*.npz, the shipped
      experts' reference.npz), or with ``qpos`` ``(T, nq)`` and ``qvel`` ``(T, nv)``, or with
      ``states_0`` (``ws expert export``'s episodes.npz: its first episode);
    * HDF5 in D4RL's format: ``infos/qpos`` and ``infos/qvel`` (or ``qpos`` / ``qvel``) per row;
      with ``terminals`` / ``timeouts`` only the first episode (up to the first end) is used.

    Raises:
        FileNotFoundError: the file is missing.
        ConfigError: none of the above.
    """
    import h5py

    from .config import ConfigError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference trajectory {path} does not exist")
    expect = ("an .npz with 'states' (or 'qpos' and 'qvel', or 'states_0') or a D4RL-format HDF5 with "
              "infos/qpos and infos/qvel")
    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                pre = "infos/" if "infos/qpos" in f and "infos/qvel" in f else ""
                states = np.concatenate([f[pre + "qpos"][()], f[pre + "qvel"][()]], axis=-1).astype(np.float64)
                ends = np.zeros(len(states), bool)
                for k in ("terminals", "timeouts"):
                    if k in f:
                        ends |= f[k][()].astype(bool).reshape(-1)[:len(states)]
                if ends.any():
                    states = states[:int(np.flatnonzero(ends)[0]) + 1]
        else:
            with np.load(path, allow_pickle=False) as f:
                if "states" in f:
                    states = np.asarray(f["states"], dtype=np.float64)
                elif "qpos" in f and "qvel" in f:
                    states = np.concatenate([f["qpos"], f["qvel"]], axis=-1).astype(np.float64)
                else:
                    states = np.asarray(f["states_0"], dtype=np.float64)
    except (OSError, KeyError, ValueError, AttributeError, TypeError) as e:  # AttributeError: a bare .npy
        raise ConfigError(f"reference {path} is not {expect}: {e}") from e
    return states


def expert_folder(env: StateEnv, config: ControllerConfig) -> Path | None:
    """The folder of ``config.expert`` (``"default"``: the shipped expert of ``env``), or None.

    Raises:
        FileNotFoundError: the folder or its ``episodes.npz`` is missing (the message says how
            to make one).
    """
    if not config.expert:
        return None
    from .expert import SHIPPED

    path = SHIPPED.get(env.name) if config.expert == "default" else Path(config.expert)
    if path is None or not (Path(path) / "episodes.npz").is_file():
        raise FileNotFoundError(
            f"no expert at {path} for {env.name} (expert: {config.expert}); make one with "
            f"'ws expert train --env {env.name}' then 'ws expert export'")
    return Path(path)


def expert_action_stats(folder: Path, nu: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (nu,), var (nu,))`` of an exported expert's actions (``episodes.npz``).

    Raises:
        ConfigError: the file lacks them or they have another size.
    """
    from .config import ConfigError

    with np.load(folder / "episodes.npz", allow_pickle=False) as f:
        if "action_mean" not in f or "action_var" not in f:
            raise ConfigError(f"{folder / 'episodes.npz'} has no action_mean/action_var")
        mean, var = np.asarray(f["action_mean"], np.float64), np.asarray(f["action_var"], np.float64)
    if mean.shape != (nu,) or var.shape != (nu,) or not (np.all(np.isfinite(mean)) and np.all(var >= 0)):
        raise ConfigError(f"{folder / 'episodes.npz'}: action statistics of shape {mean.shape}/{var.shape}, "
                          f"expected ({nu},)")
    return mean, var


def expert_value(env: StateEnv, config: ControllerConfig):
    """The expert critic's state value ``V(states (K, nx)) -> (K,)`` when
    ``config.expert_value_weight`` is set, else None.

    Raises:
        ExpertError: the expert has no ``critic.pt``.
    """
    if not config.expert_value_weight:
        return None
    from .expert import load_expert_critic

    return load_expert_critic(expert_folder(env, config)).value_state


def load_reference(env: StateEnv, config: ControllerConfig) -> ReferenceTracking | None:
    """The expert-reference term of ``config`` (None when ``config.reference`` is unset); the file
    is read by :func:`read_reference_states` (WorldScape .npz or a D4RL-format episode).

    Raises:
        FileNotFoundError: the reference file is missing.
        ConfigError: it holds no states of ``(T, nq + nv)``, or a per-joint weight list has
            not ``nq`` (positions) or ``nv`` (velocities) entries.
    """
    if not config.reference:
        return None
    from .config import ConfigError

    path = expert_folder(env, config) / "reference.npz" if config.reference == "expert" else Path(config.reference)
    states = read_reference_states(path)
    nx = env.nq + env.nv
    if states.ndim != 2 or states.shape[1] != nx or not np.all(np.isfinite(states)):
        raise ConfigError(f"reference {path} states have shape {states.shape}; expected finite (T, {nx})")
    parts = []
    for name, n, v in (("reference_pos_weight", env.nq, config.reference_pos_weight),
                       ("reference_vel_weight", env.nv, config.reference_vel_weight)):
        v = np.asarray(v, dtype=np.float64)
        if v.ndim == 1 and v.shape[0] != n:
            raise ConfigError(f"{name} has {v.shape[0]} entries; {env.name} has {n}")
        parts.append(np.broadcast_to(v, (n,)))
    w = np.concatenate(parts)
    w[env.task.x_index] = 0.0
    return ReferenceTracking(states, w, config.reference_scale, align=config.reference_align)


def make_controller(env: StateEnv, dynamics: str, config: ControllerConfig, seed: int = 0,
                    nthread: int | None = None, oracle_model=None):
    """Build a controller for ``env``.

    Args:
        env: the environment (its model seeds the oracle, its task the cost).
        dynamics: ``"oracle"``, ``"zero"``, the path of a learned-model checkpoint, or of an
            ONNX export (``.onnx``, run by ONNX Runtime).
        config: MPPI and cost settings.
        seed: the planner's noise seed.
        nthread: oracle rollout threads.
        oracle_model: the ``MjModel`` the oracle plans with (default ``env.model``; e.g. the nominal
            model while ``env`` steps a randomised one).

    Raises:
        ws_worldmodel.checkpoint.CheckpointError: unreadable checkpoint.
        ChannelMismatchError: the checkpoint was trained on other channels than ``env``'s.
        ConfigError: ``config`` sets something ``env``'s controller would ignore
            (:meth:`ControllerConfig.validate_for`).
    """
    if dynamics == "zero":
        return ZeroController(env)
    config.validate_for(env.name)
    prior = None
    layout = StateLayout.from_channels(env.state_channels, env.name)  # the costs' named views of the state
    if env.name == "piper":
        from .costs import PiperReachCost

        cost = PiperReachCost(env.task.joint_goal_fn, **config.cost, layout=layout)
        prior = lambda t0, n: np.tile(np.r_[env.task.joint_goal_fn(), 0.035], (n, 1))  # noqa: E731
    elif env.name == "go1":
        from .costs import Go1WalkCost

        cost = Go1WalkCost(env.gait, env.dt, lambda: env.goal, **config.cost, layout=layout)
        prior = lambda t0, n: env.gait.reference((t0 + np.arange(n)) * env.dt)  # noqa: E731
    else:
        cost = LocomotionCost(env.task, termination_penalty=config.termination_penalty,
                              reference=load_reference(env, config),
                              fall_penalty_per_step=config.fall_penalty_per_step,
                              fall_penalty_mode=config.fall_penalty_mode,
                              terminal_value=expert_value(env, config), terminal_value_weight=config.expert_value_weight,
                              layout=layout, healthy_margin=config.healthy_margin,
                              healthy_margin_weight=config.healthy_margin_weight)
    low, high = env.action_space.low, env.action_space.high
    folder = expert_folder(env, config)
    if folder is not None:  # seed 003's code: the nominal starts from and is extended with the expert's actions
        mean, var = expert_action_stats(folder, len(low))
        prior = lambda t0, n: np.tile(mean, (n, 1))  # noqa: E731
        if config.expert_noise_scale is not None:
            config = dataclasses.replace(config, mppi=dataclasses.replace(
                config.mppi, noise_sigma=np.sqrt(np.maximum(config.expert_noise_scale * var, 1e-6)).tolist()))
    policy = None
    if config.mppi.policy_samples:  # some samples follow the expert's own actor, closed loop in the model
        from .expert import load_expert

        policy = load_expert(folder).act_state
    if dynamics == "oracle":
        oracle = MuJoCoOracle(env.model if oracle_model is None else oracle_model, env.frame_skip, nthread=nthread)
        dyn = OracleDynamics(oracle, env.physics_state)
        return MPPIController("oracle", MPPI(dyn, cost, low, high, config.mppi, seed=seed, prior=prior,
                                             policy=policy), oracle.close)
    from ws_worldmodel.checkpoint import load_checkpoint

    if str(dynamics).endswith(".onnx"):  # an exported WestWorld served by ONNX Runtime (ws export)
        from ws_worldmodel.onnx_model import OnnxSequenceModel

        from .config import ConfigError

        model = OnnxSequenceModel(dynamics, threads=nthread)
        if model.horizon != config.mppi.horizon:
            raise ConfigError(f"{dynamics} was exported for {model.horizon} predicted steps but MPPI plans "
                              f"{config.mppi.horizon}; re-export with 'ws export --horizon {config.mppi.horizon}'")
    else:
        model = load_checkpoint(dynamics)
    if hasattr(model, "systems"):  # a trajectory world model: history-conditioned, whole horizon at once
        if env.name not in model.systems:
            raise ChannelMismatchError(f"checkpoint {dynamics} ({model.kind}) was not trained on {env.name!r} "
                                       f"(it knows {sorted(model.systems)})")
        meta = model.systems[env.name]
        check_channels_match(env.state_channels, meta["state_channels"], f"checkpoint {dynamics} state")
        check_channels_match(env.action_channels, meta["action_channels"], f"checkpoint {dynamics} action")
        dyn = SequenceDynamics(model, env.name)
        return MPPIController(f"{model.kind}:{Path(dynamics).name}",
                              MPPI(dyn, cost, low, high, config.mppi, seed=seed, prior=prior, policy=policy))
    model.check_matches(env.state_channels, env.action_channels, f"checkpoint {dynamics}")
    dyn = LearnedDynamics(model, precision=config.model_precision, disagreement_weight=config.disagreement_weight)
    return MPPIController(f"learned:{Path(dynamics).name}" + ("" if config.model_precision == "float32" else
                                                             f"@{config.model_precision}")
                          + (f"+disagreement{config.disagreement_weight:g}" if config.disagreement_weight else "")
                          + ("+margin{:g},{:g}x{:g}".format(*config.healthy_margin, config.healthy_margin_weight)
                             if config.healthy_margin_weight and any(config.healthy_margin) else ""),
                          MPPI(dyn, cost, low, high, config.mppi, seed=seed, prior=prior, policy=policy))


@dataclasses.dataclass
class EpisodeResult:
    """One closed-loop episode.

    Attributes:
        controller: controller name.
        seed: environment reset seed.
        reward: accumulated Gymnasium reward.
        length: steps until termination or truncation.
        terminated: the robot fell (unhealthy) before the step limit.
        forward_distance: root x displacement in metres (None for an arm).
        latencies_s: planner latency of each step, seconds.
        rewards: per-step rewards.
        states: ``(length + 1, nx)`` visited states.
        actions: ``(length, nu)`` executed actions.
        frames: rendered RGB frames (when rendering).
        healthy_steps: steps that paid Gymnasium's healthy bonus (its ``info["reward_survive"]``
            above 0; Hopper, Walker2d), ``None`` where the environment has none. Without termination
            a fallen robot goes on unpaid; ``Hopper-v2``, which seed 003's code runs, pays the bonus on
            every step, so its reward is this one plus the bonus times ``length - healthy_steps``.
    """

    controller: str
    seed: int
    reward: float
    length: int
    terminated: bool
    forward_distance: float | None
    latencies_s: list[float]
    rewards: list[float]
    states: np.ndarray | None = dataclasses.field(default=None, repr=False)
    actions: np.ndarray | None = dataclasses.field(default=None, repr=False)
    frames: list = dataclasses.field(default_factory=list, repr=False)
    healthy_steps: int | None = None

    def summary(self) -> dict:
        lat = np.asarray(self.latencies_s) * 1e3
        return {"controller": self.controller, "seed": self.seed, "reward": round(self.reward, 3),
                "length": self.length, "terminated": self.terminated,
                **({} if self.forward_distance is None else {"forward_distance_m": round(self.forward_distance, 4)}),
                **({} if self.healthy_steps is None else {"healthy_steps": self.healthy_steps}),
                "latency_ms_median": round(float(np.median(lat)), 3) if lat.size else None,
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None}


def run_episode(env: StateEnv, controller, seed: int, render_every: int = 0, progress=None) -> EpisodeResult:
    """Run one episode closed loop.

    Args:
        env: the environment (created with ``render=True`` if ``render_every > 0``).
        controller: object with ``reset(seed)`` and ``plan(state, t) -> action``.
        seed: the reset seed (also reseeds the planner's noise).
        render_every: keep one frame every this many steps (0: no frames).
        progress: optional tqdm bar advanced once per step.

    Raises:
        NonFiniteStateError: the environment returned a NaN state (never planned on).
    """
    state, _ = env.reset(seed=seed)
    controller.reset(seed)
    nstate = env.nq + env.nv
    x_index = getattr(env.task, "x_index", None)  # None: no forward direction (an arm)
    x0 = float(state[x_index]) if x_index is not None else 0.0
    rewards, lat, frames, states, actions = [], [], [], [state], []
    terminated = False
    t = 0
    healthy = None  # steps that paid the healthy bonus; None where the environment reports none
    while True:
        state = check_state(state, nstate)
        tic = time.perf_counter()
        action = controller.plan(state, t)
        lat.append(time.perf_counter() - tic)
        if hasattr(controller, "observe"):
            controller.observe(state, action)
        state, reward, terminated, truncated, info = env.step(action)
        if "reward_survive" in info:
            healthy = (healthy or 0) + int(info["reward_survive"] > 0)
        rewards.append(reward)
        states.append(state)
        actions.append(np.asarray(action, dtype=np.float64))
        if render_every and t % render_every == 0:
            frames.append(env.render())
        t += 1
        if progress is not None:
            progress.update(1)
        if terminated or truncated:
            break
    return EpisodeResult(controller.name, int(seed), float(np.sum(rewards)), t, bool(terminated),
                         float(state[x_index]) - x0 if x_index is not None else None, lat, [float(r) for r in rewards],
                         np.asarray(states), np.asarray(actions), frames, healthy)
