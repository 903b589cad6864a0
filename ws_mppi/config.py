"""Controller configuration: MPPI hyperparameters and cost settings, per environment, in YAML.

The defaults live here (``DEFAULTS``) and are mirrored by ``config/mppi_<env>.yaml`` (a test
keeps the two equal).

Hopper and Walker2d default to the expert planner (docs/control.md): the planner of seed 003's
public code (511205787/WestWorld, ``MPPI/configs/*_mppi.yaml``: AR(2) noise, the expert's action
distribution as prior and noise scale, temperature 0.5 / 0.25, the fall penalty per remaining
step, 10 / 100, held) with the shipped expert (``ws_mppi/experts/<env>``) as one of the samples and
its critic's value after the horizon, sized for the main job: ``horizon = 40`` (0.32 s) and
``samples = 24``, so that ``ws mppi run``'s three controllers x three episodes fit 5 minutes on 2
cores (261 s on 2026-12-05; H = 50 with K = 32 took 362 s). ``config/mppi_<env>_long_expert.yaml``
are the full-size planners (H = 100, K = 64) the results of docs/control.md were measured with.
:data:`SHORT_HORIZON` is the earlier default
(H = 20, white noise, no expert), kept for the corpus and the speed benchmarks.

Go1 and PiPER have their own costs (:class:`ws_mppi.costs.Go1WalkCost`,
:class:`~ws_mppi.costs.PiperReachCost`), whose weights are the ``cost:`` mapping. Settings an
environment's controller would ignore (e.g. ``termination_penalty`` or ``reference*`` for Go1) are
an error, raised by :meth:`ControllerConfig.validate_for` when the config is used for that
environment (:func:`ws_mppi.runner.make_controller`, :func:`default_config`, ``load_config(path, env)``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import yaml

from .costs import GO1_COST_DEFAULTS, PIPER_COST_DEFAULTS, check_healthy_margin, check_healthy_margin_weight
from .mppi import MPPIConfig
from .errors import MPPIError

__all__ = ["ConfigError", "ControllerConfig", "check_disagreement_weight", "DEFAULTS", "SHORT_HORIZON", "COST_KEYS", "IGNORED_KEYS",
           "default_config", "short_horizon_config", "load_config", "save_config"]


class ConfigError(MPPIError):
    """Raised for an unreadable config file or invalid settings (the message names them)."""


def check_disagreement_weight(w) -> None:
    """Raise ``ValueError`` unless ``w`` is a finite number >= 0 (the config file and the CLI's
    ``--disagreement-weight`` share this check)."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        raise ValueError(f"disagreement_weight must be a finite number >= 0, got {w!r}")


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
            velocity channels (root x always 0): one number for every channel, or a list with
            one per qpos (``nq``) / qvel (``nv``) entry, as seed 003's code gives Walker2d's.
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
        model_precision: ``"float32"`` or ``"bfloat16"``: the precision of a learned one-step
            model's matmuls in the planner's rollouts (:class:`ws_mppi.dynamics.LearnedDynamics`;
            the MLPEnsemble); bfloat16 is about twice as fast on CPUs with AVX512-BF16 or AMX.
            The oracle and trajectory world models ignore it.
        disagreement_weight: a learned MLPEnsemble's rollouts pay this times the summed
            disagreement of its elites (:class:`ws_mppi.dynamics.LearnedDynamics`), keeping the
            plan where the model's data were; 0 (default): off. The oracle and trajectory world
            models ignore it.
        healthy_margin, healthy_margin_weight: ``[dz, dangle]`` (m, rad) and ``w``: on Hopper and
            Walker2d a state within ``dz`` of either end of the healthy torso height range, or
            ``dangle`` of the pitch range, pays ``w d**2`` per step, ``d`` its depth into that band
            from 0 to 1 (:class:`ws_mppi.costs.LocomotionCost`), a buffer for a learned model's
            error; ``w = 0`` (default): off.
        cost: the weights of the environment's own cost, by name (Go1: those of
            :class:`ws_mppi.costs.Go1WalkCost`, PiPER: of :class:`~ws_mppi.costs.PiperReachCost`;
            Hopper and Walker2d take none: their settings are the fields above). Keys are checked
            per environment by :meth:`validate_for`.
    """

    mppi: MPPIConfig = dataclasses.field(default_factory=MPPIConfig)
    termination_penalty: float = 50.0
    fall_penalty_per_step: float = 0.0
    fall_penalty_mode: str = "linear"
    reference: str | None = None
    reference_scale: float = 0.1
    reference_pos_weight: float | list[float] = 1.0
    reference_vel_weight: float | list[float] = 0.1
    reference_align: str = "time"
    expert: str | None = None
    expert_noise_scale: float | None = None
    expert_value_weight: float = 0.0
    model_precision: str = "float32"
    disagreement_weight: float = 0.0
    healthy_margin: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
    healthy_margin_weight: float = 0.0
    cost: dict = dataclasses.field(default_factory=dict)

    def validate_for(self, env: str) -> "ControllerConfig":
        """Check that ``env``'s controller uses every setting given (returns ``self``).

        Raises:
            ConfigError: a ``cost:`` key ``env``'s cost does not take, or a field ``env``'s
                controller ignores (:data:`IGNORED_KEYS`) that the config file names or that differs
                from its default; the message names the key and the environment.
        """
        allowed = COST_KEYS.get(env, ())
        bad = sorted(set(self.cost) - set(allowed))
        if bad:
            raise ConfigError(f"cost keys {bad} are not used by {env}'s cost; "
                              + (f"valid: {sorted(allowed)}" if allowed else f"{env} takes no cost: keys"))
        given = getattr(self, "_file_keys", frozenset())
        defaults = ControllerConfig()
        ignored = [k for k in IGNORED_KEYS.get(env, ()) if k in given or getattr(self, k) != getattr(defaults, k)]
        if ignored:
            raise ConfigError(f"{ignored} {'is' if len(ignored) == 1 else 'are'} ignored by the {env} controller "
                              f"(its cost is {'Go1WalkCost' if env == 'go1' else 'PiperReachCost'}, weights under "
                              "cost:); remove them")
        return self

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
            for k in ("reference_pos_weight", "reference_vel_weight"):
                v = getattr(cfg, k)
                vals = v if isinstance(v, (list, tuple)) else [v]
                if not vals or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not x >= 0
                                   for x in vals):
                    raise ValueError(f"{k} must be a non-negative number or a list of them, got {v!r}")
                setattr(cfg, k, [float(x) for x in v] if isinstance(v, (list, tuple)) else float(v))
            if cfg.expert_value_weight and not cfg.expert:
                raise ValueError("expert_value_weight needs an expert whose critic to use (set expert: default "
                                 "or a folder)")
            if cfg.model_precision not in ("float32", "bfloat16"):
                raise ValueError(f"model_precision must be 'float32' or 'bfloat16', got {cfg.model_precision!r}")
            check_disagreement_weight(cfg.disagreement_weight)
            cfg.healthy_margin = list(check_healthy_margin(cfg.healthy_margin))
            check_healthy_margin_weight(cfg.healthy_margin_weight)
            if not isinstance(cfg.cost, dict):
                raise ValueError(f"cost must be a mapping of weight names to numbers, got {cfg.cost!r}")
            for k, v in cfg.cost.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"cost {k} must be a number, got {v!r}")
            if cfg.mppi.policy_samples and not cfg.expert:
                raise ValueError("mppi.policy_samples needs an expert whose actor to follow (set expert: default "
                                 "or a folder)")
            return cfg
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid controller config: {e}") from e


SHORT_HORIZON = ControllerConfig(
    mppi=MPPIConfig(horizon=20, samples=64, temperature=0.1, noise_sigma=0.5),
    termination_penalty=50.0,
)
"""The short-horizon locomotion planner chosen here before the expert planner (H = 20 steps,
K = 64, lambda 0.1, white noise sigma 0.5, a termination penalty of 50 paid once; no expert): it
lets Hopper fall after 130-140 steps even on the oracle. ``ws corpus build``'s ``mppi``
behaviour and the planner-speed benchmarks keep it, so their data and figures stay comparable."""


def short_horizon_config() -> ControllerConfig:
    """A fresh copy of :data:`SHORT_HORIZON` (``config/mppi_short_horizon.yaml``)."""
    return ControllerConfig.from_dict(SHORT_HORIZON.to_dict())


def _expert_planner(temperature: float, ar_coeffs: list[float], fall_penalty: float) -> ControllerConfig:
    """The expert planner at the main job's size (module docstring); seed 003's code for the rest."""
    return ControllerConfig(
        mppi=MPPIConfig(horizon=40, samples=24, temperature=temperature, noise_sigma=0.9, noise="ar",
                        ar_coeffs=ar_coeffs, step_size=1.0, policy_samples=1),
        termination_penalty=0.0, fall_penalty_per_step=fall_penalty, fall_penalty_mode="held",
        expert="default", expert_noise_scale=0.2, expert_value_weight=1.0)

# The weights each environment's own cost takes under ``cost:`` (Hopper and Walker2d: none).
COST_KEYS: dict[str, tuple[str, ...]] = {"go1": tuple(GO1_COST_DEFAULTS), "piper": tuple(PIPER_COST_DEFAULTS)}

# Fields an environment's controller does not use (make_controller builds Go1WalkCost / PiperReachCost
# without them); setting them is an error. ``expert`` and ``expert_noise_scale`` (the prior) apply to all.
_LOCOMOTION_ONLY = ("termination_penalty", "fall_penalty_per_step", "fall_penalty_mode", "reference",
                    "reference_scale", "reference_pos_weight", "reference_vel_weight", "reference_align",
                    "expert_value_weight", "healthy_margin", "healthy_margin_weight")
IGNORED_KEYS: dict[str, tuple[str, ...]] = {"go1": _LOCOMOTION_ONLY, "piper": _LOCOMOTION_ONLY}

DEFAULTS: dict[str, ControllerConfig] = {
    "hopper": _expert_planner(0.5, [0.5, 0.5, 0.0], 10.0),
    "walker2d": _expert_planner(0.25, [0.4, 0.6, 0.0], 100.0),
    # Go1 (issue 4): 0.3 s horizon of 0.02 s steps, noise around the trot reference (the prior)
    "go1": ControllerConfig(mppi=MPPIConfig(horizon=15, samples=32, temperature=1.0, noise_sigma=0.1),
                            cost=dict(GO1_COST_DEFAULTS)),
    # PiPER reaching: 0.2 s of 0.02 s steps, noise in rad (and m for the finger) around the IK goal (the prior)
    "piper": ControllerConfig(mppi=MPPIConfig(horizon=10, samples=32, temperature=0.1, noise_sigma=0.05),
                              cost=dict(PIPER_COST_DEFAULTS)),
}


def default_config(env: str) -> ControllerConfig:
    """A fresh copy of the default controller config of ``env``.

    Raises:
        UnknownEnvironmentError: no default exists for ``env``.
    """
    if env not in DEFAULTS:
        from ws_sim.envs import UnknownEnvironmentError

        raise UnknownEnvironmentError(f"unknown environment {env!r}; choose one of {sorted(DEFAULTS)}")
    return ControllerConfig.from_dict(DEFAULTS[env].to_dict()).validate_for(env)


def load_config(path: str | Path, env: str | None = None) -> ControllerConfig:
    """Load a controller config from YAML.

    Args:
        path: the YAML file.
        env: when given, the config is also checked for that environment
            (:meth:`ControllerConfig.validate_for`); :func:`ws_mppi.runner.make_controller` checks it
            in any case. The file's top-level keys are remembered, so that naming a field the
            environment ignores is an error even at its default value.

    Raises:
        FileNotFoundError: missing file.
        ConfigError: invalid YAML, unknown keys, invalid values, or (with ``env``) keys ``env``
            ignores.
    """
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from e
    try:
        cfg = ControllerConfig.from_dict(data)
        cfg._file_keys = frozenset(data or {})
        if env is not None:
            cfg.validate_for(env)
        return cfg
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from e


def save_config(cfg: ControllerConfig, path: str | Path, env: str | None = None) -> None:
    """Write ``cfg`` as YAML; with ``env``, without the fields ``env``'s controller ignores (so that
    ``load_config(path, env)`` accepts the file)."""
    d = cfg.to_dict()
    for k in IGNORED_KEYS.get(env, ()) if env else ():
        d.pop(k, None)
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
