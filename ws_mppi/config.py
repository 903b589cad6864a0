"""Controller configuration: MPPI hyperparameters and cost settings, per environment, in YAML.

The defaults live here (``DEFAULTS``) and are mirrored by ``config/mppi_<env>.yaml`` (a test
keeps the two equal). The seed's own values for horizon, samples and lambda are lost in its
text (seed 003, Appendix D.3.1-D.3.2 print them blank), so these were chosen here by
running oracle MPPI on Hopper-v5 on two cores:

* ``horizon = 20`` steps (0.16 s at Hopper's 8 ms control period): long enough to see a
  landing, short enough that a learned model's compounding error stays small;
* ``samples = 64``: one oracle cycle takes ~35 ms on 2 threads, the learned MLP ~10 ms;
* ``temperature lambda = 0.1`` in reward units (trajectory costs spread over tens of units,
  so the update is close to the best few samples);
* ``noise_sigma = 0.5`` in normalised action units ([-1, 1]);
* ``termination_penalty = 50``: a rollout that falls pays 50 once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from .mppi import MPPIConfig

__all__ = ["ConfigError", "ControllerConfig", "DEFAULTS", "default_config", "load_config", "save_config"]


class ConfigError(ValueError):
    """Raised for an unreadable config file or invalid settings (the message names them)."""


@dataclasses.dataclass
class ControllerConfig:
    """Everything that shapes the closed-loop controller of one environment.

    Attributes:
        mppi: the planner's hyperparameters.
        termination_penalty: cost paid once by a rollout that becomes unhealthy.
        fall_penalty_per_step: cost per horizon step left after a rollout's fall (seed 003's
            code: 10 Hopper, 100 Walker2d).
        fall_penalty_mode: ``"linear"`` (penalty x remaining steps) or ``"held"`` (the seed's
            code: the fall step's cost plus that, held for every remaining step; see
            :class:`ws_mppi.costs.LocomotionCost`).
        reference: optional ``.npz`` with ``states (T, nq + nv)``, e.g. one written by
            ``ws mppi run`` (``states_<controller>_seed<S>.npz``), tracked by the
            expert-reference term of seed 003 eqs. (21)/(28); ``None`` disables it.
        reference_scale: ``w_ref`` of that term.
        reference_pos_weight, reference_vel_weight: the diagonal weights of position and
            velocity channels (root x always 0). The seed's own values are lost in its text.
        reference_align: ``"time"`` (the reference indexed by the episode step, as the seed's
            code does) or ``"nearest"`` (by the gait phase nearest the current state; see
            :class:`ws_mppi.costs.ReferenceTracking`).
        expert: an expert made by ``ws expert export`` (its folder, or ``"default"`` for the
            shipped one of the environment): its action mean becomes the MPPI prior (the
            initial nominal and the tail filled after each shift), ``reference: expert``
            tracks its first episode, and ``mppi.policy_samples`` of the samples follow its
            actor. ``None``: no expert.
        expert_noise_scale: with an expert, the noise variance is this times the expert's
            action variance per dimension (seed 003's code: 0.8); ``None`` keeps
            ``mppi.noise_sigma``.
        expert_value_weight: with an expert that has a critic (``critic.pt``), a rollout healthy
            to its end is credited this times the expert's value of its last state (the return
            it expects beyond the horizon; 0: off).
    """

    mppi: MPPIConfig = dataclasses.field(default_factory=MPPIConfig)
    termination_penalty: float = 50.0
    fall_penalty_per_step: float = 0.0
    fall_penalty_mode: str = "linear"
    reference: str | None = None
    reference_scale: float = 0.1
    reference_pos_weight: float = 1.0
    reference_vel_weight: float = 0.1
    reference_align: str = "time"
    expert: str | None = None
    expert_noise_scale: float | None = None
    expert_value_weight: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ControllerConfig":
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"controller config must be a mapping, got {type(d).__name__}")
        d = dict(d or {})
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - top
        if unknown:
            raise ConfigError(f"unknown controller config keys {sorted(unknown)}")
        mppi = dict(d.get("mppi") or {})
        names = {f.name for f in dataclasses.fields(MPPIConfig)}
        bad = set(mppi) - names
        if bad:
            raise ConfigError(f"unknown MPPI config keys {sorted(bad)}; valid: {sorted(names)}")
        try:
            rest = {k: v for k, v in d.items() if k != "mppi"}
            cfg = cls(mppi=MPPIConfig(**mppi), **rest)
            cfg.termination_penalty = float(cfg.termination_penalty)
            cfg.fall_penalty_per_step = float(cfg.fall_penalty_per_step)
            if cfg.expert_noise_scale is not None and not cfg.expert_noise_scale > 0:
                raise ValueError(f"expert_noise_scale must be positive, got {cfg.expert_noise_scale}")
            if cfg.reference == "expert" and not cfg.expert:
                raise ValueError("reference: expert needs an expert (set expert: default or a folder)")
            if cfg.fall_penalty_mode not in ("linear", "held"):
                raise ValueError(f"fall_penalty_mode must be 'linear' or 'held', got {cfg.fall_penalty_mode!r}")
            cfg.expert_value_weight = float(cfg.expert_value_weight)
            if cfg.expert_value_weight and not cfg.expert:
                raise ValueError("expert_value_weight needs an expert whose critic to use (set expert: default "
                                 "or a folder)")
            if cfg.mppi.policy_samples and not cfg.expert:
                raise ValueError("mppi.policy_samples needs an expert whose actor to follow (set expert: default "
                                 "or a folder)")
            return cfg
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid controller config: {e}") from e


_LOCOMOTION = ControllerConfig(
    mppi=MPPIConfig(horizon=20, samples=64, temperature=0.1, noise_sigma=0.5),
    termination_penalty=50.0,
)

DEFAULTS: dict[str, ControllerConfig] = {
    "hopper": _LOCOMOTION,
    "walker2d": _LOCOMOTION,
    # Go1 (issue 4): 0.3 s horizon of 0.02 s steps, noise around the trot reference (the prior)
    "go1": ControllerConfig(mppi=MPPIConfig(horizon=15, samples=32, temperature=1.0, noise_sigma=0.1)),
    # PiPER reaching: 0.2 s of 0.02 s steps, noise in rad (and m for the finger) around the IK goal (the prior)
    "piper": ControllerConfig(mppi=MPPIConfig(horizon=10, samples=32, temperature=0.1, noise_sigma=0.05)),
}


def default_config(env: str) -> ControllerConfig:
    """A fresh copy of the default controller config of ``env``.

    Raises:
        UnknownEnvironmentError: no default exists for ``env``.
    """
    if env not in DEFAULTS:
        from ws_sim.envs import UnknownEnvironmentError

        raise UnknownEnvironmentError(f"unknown environment {env!r}; choose one of {sorted(DEFAULTS)}")
    return ControllerConfig.from_dict(DEFAULTS[env].to_dict())


def load_config(path: str | Path) -> ControllerConfig:
    """Load a controller config from YAML.

    Raises:
        FileNotFoundError: missing file.
        ConfigError: invalid YAML, unknown keys or invalid values.
    """
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    try:
        return ControllerConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from e


def save_config(cfg: ControllerConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
