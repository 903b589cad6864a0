"""MPPI trajectory costs for Hopper and Walker2d (seed 003, Appendices D.3.1-D.3.2).

The per-step cost is the negative Gymnasium reward (eqs. 17-20, 24-27): forward velocity of
the root, a healthy bonus while the torso height and pitch (and, for Hopper, every other
state entry) stay in Gymnasium's ranges, and a quadratic control cost. As in the
environment, nothing accrues after the first unhealthy state (the episode would have
ended); ``termination_penalty`` adds a fixed cost to a rollout that falls, and
``fall_penalty_per_step`` a cost for every horizon step left after the fall (the seed's code:
10 on Hopper, 100 on Walker2d), so that falling later is cheaper than falling sooner. The optional
expert-reference tracking term is eq. (21)/(28): ``w_ref * sum_i W_i (s_t,i - s^ref_t,i)^2``
over ``[qpos, qvel]`` with the root x weight zero. Summed over the horizon they give the
MPPI objective of eqs. (22)/(29).

Every cost reads the state through a :class:`ws_sim.channels.StateLayout`, named views resolved
from the environment's state channels (``states[..., layout.root_vel_x]``), not literal slices.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ws_sim.channels import StateLayout

__all__ = ["LocomotionCost", "check_healthy_margin", "check_healthy_margin_weight", "ReferenceTracking", "Go1WalkCost", "PiperReachCost", "GO1_COST_DEFAULTS",
           "PIPER_COST_DEFAULTS"]

# The cost weights' built-in values (config/mppi_go1.yaml and mppi_piper.yaml's ``cost:`` mirror them).
GO1_COST_DEFAULTS = dict(v_des=1.0, z_ref=0.30, w_v=4.0, w_lat=2.0, w_z=50.0, w_tilt=20.0, w_yaw=5.0, w_w=0.05,
                         w_u=1.0, fall_penalty=100.0)
PIPER_COST_DEFAULTS = dict(w_q=10.0, w_qd=0.05, w_u=0.1, w_terminal=5.0)


class _TaskLayout:
    """The planar-root views of a :class:`ws_sim.envs.LocomotionTask` alone (its ``x_index``,
    ``z_index`` and ``angle_index`` are resolved by channel name in :mod:`ws_sim.envs`), for a
    :class:`LocomotionCost` built without the environment's :class:`StateLayout`."""

    def __init__(self, task):
        self.root_x, self.root_z, self.root_pitch = task.x_index, task.z_index, task.angle_index
        if sorted((self.root_x, self.root_z)) != [0, 1]:
            raise ValueError("pass layout=StateLayout.from_channels(env.state_channels): the task's root x and z "
                             f"are channels {self.root_x} and {self.root_z}, not the first two")
        self.non_root_xz = slice(2, None)


@dataclasses.dataclass
class ReferenceTracking:
    """Expert-reference tracking term (seed 003, eqs. 21 and 28).

    Attributes:
        reference: ``(T, nx)`` reference states ``[qpos, qvel]`` indexed by episode step.
        weights: ``(nx,)`` diagonal weights ``W`` (root x weight should be 0).
        scale: the overall weight ``w_ref``.
        align: how a plan made at episode step ``t0`` indexes the reference. ``"time"``: the
            state after planned step ``i`` is compared with ``reference[t0 + 1 + i]`` (the
            seed's code: the episode clock). ``"nearest"``: with the reference step ``p``
            nearest the current state in the weighted norm ``W`` (the gait phase the robot is
            actually in), with ``reference[p + 1 + i]``; a hopper whose stride drifts from the
            expert's is then not pulled back to a phase it left long ago.
    """

    reference: np.ndarray
    weights: np.ndarray
    scale: float = 0.1
    align: str = "time"

    def __post_init__(self):
        self.reference = np.asarray(self.reference, dtype=np.float32)
        self.weights = np.asarray(self.weights, dtype=np.float32)
        if self.reference.ndim != 2 or self.weights.shape != (self.reference.shape[1],):
            raise ValueError(f"reference {self.reference.shape} and weights {self.weights.shape} "
                             "must be (T, nx) and (nx,)")
        if self.align not in ("time", "nearest"):
            raise ValueError(f"reference align must be 'time' or 'nearest', got {self.align!r}")

    def indices(self, state, t0: int, horizon: int) -> np.ndarray:
        """``(horizon,)`` the reference rows the states after planned steps ``0 .. H-1`` are
        compared with (clipped to the reference's last row)."""
        n = len(self.reference)
        if self.align == "time":
            start = int(t0)
        else:  # the phase: nearest reference state among those with a whole horizon after them
            last = max(1, n - horizon)
            s = np.asarray(state, dtype=np.float32).reshape(-1)
            d = np.square(self.reference[:last] - s) @ self.weights
            start = int(np.argmin(d))
        return np.clip(np.arange(start + 1, start + 1 + horizon), 0, n - 1)


def check_healthy_margin(margin) -> tuple[float, float]:
    """``(dz, dangle)`` as floats, or ``ValueError`` unless ``margin`` is two finite numbers >= 0
    (the config file, ``--healthy-margin`` and :class:`LocomotionCost` share this check)."""
    vals = list(margin) if isinstance(margin, (list, tuple)) else None
    if (vals is None or len(vals) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0)
                   for v in vals)):
        raise ValueError(f"healthy_margin must be two finite numbers >= 0 [height m, pitch rad], got {margin!r}")
    return float(vals[0]), float(vals[1])


def check_healthy_margin_weight(w) -> float:
    """``w`` as a float, or ``ValueError`` unless it is a finite number >= 0."""
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        raise ValueError(f"healthy_margin_weight must be a finite number >= 0, got {w!r}")
    return float(w)


class LocomotionCost:
    """Batched negative-reward cost of K predicted trajectories.

    Args:
        task: a ``ws_sim.envs.LocomotionTask`` (Gymnasium's reward numbers).
        termination_penalty: cost added once to a rollout that becomes unhealthy.
        reference: optional :class:`ReferenceTracking` term.
        fall_penalty_per_step: ``p``, a cost per horizon step remaining after the first
            unhealthy state (``r = H - 1 - t_fall``).
        fall_penalty_mode: ``"linear"``: a fall adds ``p r``. ``"held"`` (the seed's code,
            ``MPPI/hopper/hopper_mppi_expert_refcost_math.py``): the fall step's cost ``c_fall``
            gains ``p r`` and is then repeated for each of the ``r`` remaining steps, adding
            ``p r (r + 1) + r c_fall``, so an early fall costs quadratically more than a late one.
        terminal_value: optional callable ``V(states (K, nx)) -> (K,)``, the return expected after
            the horizon (e.g. :meth:`ws_mppi.expert.ExpertCritic.value_state`); a rollout that
            stays healthy to its end is credited ``terminal_value_weight * V(s_H)``, one that falls
            nothing.
        layout: the environment's :class:`ws_sim.channels.StateLayout` (root x, z, pitch and the
            channels under Hopper's healthy-state range by name); ``None``: the task's indices.
        healthy_margin: ``(dz, dangle)`` in m and rad: a band inside each end of Gymnasium's healthy
            torso height and pitch ranges. A state in the band stays healthy but pays
            ``healthy_margin_weight * d**2`` per step, ``d`` its depth into the band as a fraction
            of the band (0 at the band's inner edge, 1 at the range's end), summed over height and
            pitch; a band of 0 is off. A buffer for a learned model's error: a rollout the model
            predicts to pass just inside the range may fall in the simulator. (Counting the band as
            a fall instead makes the planner give up once the robot is in it: every rollout from
            there "falls" at its first step.)
        healthy_margin_weight: the cost per step at the end of a band (``d = 1``). The margin is
            this project's addition, not in seed 003 or its code.

    Raises:
        ValueError: an unknown ``fall_penalty_mode``, a ``healthy_margin`` that is not two finite
            numbers >= 0 or whose bands overlap, or a negative or non-finite ``healthy_margin_weight``.

    Call with ``state (nx,)``, ``actions (K, H, nu)``, ``states (K, H, nx)`` (``s_1..s_H``)
    and the episode step ``t0`` of ``state`` (for the reference); returns costs ``(K,)``.
    """

    def __init__(self, task, termination_penalty: float = 0.0,
                 reference: ReferenceTracking | None = None, fall_penalty_per_step: float = 0.0,
                 fall_penalty_mode: str = "linear", terminal_value=None, terminal_value_weight: float = 1.0,
                 layout: StateLayout | None = None, healthy_margin=(0.0, 0.0), healthy_margin_weight: float = 0.0):
        if fall_penalty_mode not in ("linear", "held"):
            raise ValueError(f"fall_penalty_mode must be 'linear' or 'held', got {fall_penalty_mode!r}")
        dz, dang = check_healthy_margin(healthy_margin)
        for name, d, (lo, hi) in (("height", dz, task.healthy_z_range), ("angle", dang, task.healthy_angle_range)):
            if not lo + d < hi - d:
                raise ValueError(f"healthy_margin {[dz, dang]}: the {name} bands of {d:g} overlap in the healthy "
                                 f"{name} range ({lo:g}, {hi:g})")
        self.healthy_margin = (dz, dang)
        self.healthy_margin_weight = check_healthy_margin_weight(healthy_margin_weight)
        self.task = task
        self.layout = _TaskLayout(task) if layout is None else layout
        self.termination_penalty = float(termination_penalty)
        self.reference = reference
        self.fall_penalty_per_step = float(fall_penalty_per_step)
        self.fall_penalty_mode = fall_penalty_mode
        self.terminal_value = terminal_value
        self.terminal_value_weight = float(terminal_value_weight)

    def healthy(self, states: torch.Tensor) -> torch.Tensor:
        """Gymnasium's health check, batched: ``(..., nx) -> (...)`` bool."""
        t, lay = self.task, self.layout
        z = states[..., lay.root_z]
        ang = states[..., lay.root_pitch]
        ok = (z > t.healthy_z_range[0]) & (z < t.healthy_z_range[1])
        ok &= (ang > t.healthy_angle_range[0]) & (ang < t.healthy_angle_range[1])
        if t.healthy_state_range is not None:
            rest = states[..., lay.non_root_xz]
            ok &= ((rest > t.healthy_state_range[0]) & (rest < t.healthy_state_range[1])).all(-1)
        return ok

    def margin_cost(self, states: torch.Tensor) -> torch.Tensor:
        """The healthy-margin term per state: ``(..., nx) -> (...)``, ``healthy_margin_weight`` times
        the summed squared depths into the height and pitch bands (each clipped to 1)."""
        t, lay = self.task, self.layout
        out = torch.zeros(states.shape[:-1], dtype=states.dtype, device=states.device)
        for d, (lo, hi), x in ((self.healthy_margin[0], t.healthy_z_range, states[..., lay.root_z]),
                               (self.healthy_margin[1], t.healthy_angle_range, states[..., lay.root_pitch])):
            if d > 0:
                depth = torch.maximum((lo + d - x) / d, (x - (hi - d)) / d).clamp_(0.0, 1.0)
                out += depth.square()
        return out.mul_(self.healthy_margin_weight)

    def step_rewards(self, state: torch.Tensor, actions: torch.Tensor,
                     states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step Gymnasium rewards and the alive mask.

        Returns:
            ``(rewards (K, H), alive (K, H))`` where ``alive[:, t]`` is true while no state
            before step ``t`` was unhealthy (the reward of step ``t`` counts).
        """
        t = self.task
        k, h, _ = states.shape
        xi = self.layout.root_x
        x = states[..., xi]
        x_prev = torch.cat([state[xi].expand(k, 1).to(x.dtype), x[:, :-1]], dim=1)
        healthy = self.healthy(states)
        rewards = (t.forward_reward_weight * (x - x_prev) / t.dt
                   + t.healthy_reward * healthy.to(x.dtype)
                   - t.ctrl_cost_weight * actions.square().sum(-1))
        alive = torch.ones_like(healthy)
        alive[:, 1:] = torch.cumprod(healthy[:, :-1].to(torch.int8), dim=1).bool()
        return rewards, alive

    def __call__(self, state: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                 t0: int = 0) -> torch.Tensor:
        rewards, alive = self.step_rewards(state, actions, states)
        step_cost = -rewards  # (K, H)
        if self.reference is not None:
            ref = self.reference
            h = states.shape[1]
            idx = ref.indices(state.detach().cpu().numpy() if torch.is_tensor(state) else state, t0, h)
            r = torch.as_tensor(ref.reference[idx], dtype=states.dtype)
            w = torch.as_tensor(ref.weights, dtype=states.dtype)
            step_cost = step_cost + ref.scale * ((states - r).square() * w).sum(-1)
        if self.healthy_margin_weight and any(self.healthy_margin):
            step_cost = step_cost + self.margin_cost(states)
        cost = (step_cost * alive.to(step_cost.dtype)).sum(1)
        if self.termination_penalty or self.fall_penalty_per_step:
            healthy = self.healthy(states)
            fell = ~(healthy.all(1))
            cost = cost + self.termination_penalty * fell.to(cost.dtype)
            if self.fall_penalty_per_step:
                h = states.shape[1]
                t_fall = torch.where(fell, (~healthy).to(torch.int8).argmax(1), torch.full_like(fell, h - 1, dtype=torch.long))
                remain = (h - 1 - t_fall).to(cost.dtype)
                penalty = self.fall_penalty_per_step * remain
                if self.fall_penalty_mode == "held":  # the seed's code: the fall step's cost, penalty added, held
                    c_fall = step_cost.gather(1, t_fall[:, None])[:, 0]
                    penalty = penalty * (remain + 1) + remain * c_fall
                cost = cost + torch.where(fell, penalty, torch.zeros_like(penalty))
        if self.terminal_value is not None and self.terminal_value_weight:
            survived = self.healthy(states).all(1)
            v = self.terminal_value(states[:, -1]).to(cost.dtype)
            cost = cost - self.terminal_value_weight * torch.where(survived, v, torch.zeros_like(v))
        return cost


class Go1WalkCost:
    """MPPI cost of Go1 straight walking (seed 003 eq. 31, after its reference [3]).

    A quadratic tracking cost with diagonal weights on a state reference and on the gait
    scheduler's joint reference:

        c_t = w_v |v_xy - v_des d_hat|^2 + w_lat (lateral offset from the line to the goal)^2
              + w_z (z - z_ref)^2 + w_tilt (q_x^2 + q_y^2) + w_yaw q_z^2 + w_w |omega|^2
              + w_u |u_t - u_ref(t)|^2,

    plus ``fall_penalty`` once for a rollout whose trunk drops below 0.15 m; after a fall
    nothing more accrues. ``d_hat`` points from the start of the rollout to the current
    goal. The base's planar position and height, orientation quaternion ``(qw, qx, qy, qz)``,
    planar and angular velocity are read through ``layout`` (a
    :class:`ws_sim.channels.StateLayout`: ``base_xy``, ``base_z``, ``base_quat``, ``base_vel_xy``,
    ``base_angvel``; by default that of :func:`ws_sim.go1.load_go1`'s model).

    Args:
        gait: the :class:`ws_sim.go1.TrotGait` giving ``u_ref``.
        dt: control step in seconds.
        goal_fn: callable returning the current planar goal ``(2,)``.
        v_des: desired forward speed in m/s; other weights as named (defaults
            :data:`GO1_COST_DEFAULTS`, the ``cost:`` of ``config/mppi_go1.yaml``).
        layout: the state's named views.
    """

    def __init__(self, gait, dt: float, goal_fn, v_des: float = 1.0, z_ref: float = 0.30, w_v: float = 4.0,
                 w_lat: float = 2.0, w_z: float = 50.0, w_tilt: float = 20.0, w_yaw: float = 5.0, w_w: float = 0.05,
                 w_u: float = 1.0, fall_penalty: float = 100.0, layout: StateLayout | None = None):
        self.gait, self.dt, self.goal_fn = gait, float(dt), goal_fn
        if layout is None:
            from ws_sim.channels import channels_from_model
            from ws_sim.go1 import load_go1

            layout = StateLayout.from_channels(channels_from_model(load_go1()[0])[0], "go1")
        lay = self.layout = layout
        self._xy, self._z, self._quat = lay.base_xy, lay.base_z, lay.base_quat
        self._vxy, self._omega = lay.base_vel_xy, lay.base_angvel
        self.v_des, self.z_ref = v_des, z_ref
        self.w = dict(v=w_v, lat=w_lat, z=w_z, tilt=w_tilt, yaw=w_yaw, w=w_w, u=w_u)
        self.fall_penalty = fall_penalty

    def __call__(self, state: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, t0: int = 0) -> torch.Tensor:
        k, h, _ = states.shape
        dtype = states.dtype
        p0 = state[self._xy].to(dtype)
        goal = torch.as_tensor(np.asarray(self.goal_fn(), dtype=np.float64)[:2], dtype=dtype)
        d = goal - p0
        d_hat = d / d.norm().clamp_min(1e-6)
        normal = torch.stack([-d_hat[1], d_hat[0]])
        v = states[..., self._vxy]
        lateral = ((states[..., self._xy] - p0) * normal).sum(-1)
        q = states[..., self._quat]  # (qw, qx, qy, qz)
        omega = states[..., self._omega]
        z = states[..., self._z]
        times = (t0 + np.arange(h)) * self.dt
        u_ref = torch.as_tensor(self.gait.reference(times), dtype=dtype)  # (H, 12)
        w = self.w
        c = (w["v"] * (v - self.v_des * d_hat).square().sum(-1) + w["lat"] * lateral.square()
             + w["z"] * (z - self.z_ref).square() + w["tilt"] * (q[..., 1].square() + q[..., 2].square())
             + w["yaw"] * q[..., 3].square() + w["w"] * omega.square().sum(-1)
             + w["u"] * (actions - u_ref).square().sum(-1))
        down = z < 0.15
        alive = torch.ones_like(down)
        alive[:, 1:] = torch.cumprod((~down[:, :-1]).to(torch.int8), dim=1).bool()
        return (c * alive.to(dtype)).sum(1) + self.fall_penalty * down.any(1).to(dtype)


class PiperReachCost:
    """MPPI cost of PiPER reaching, in joint space.

    The goal point is turned into arm joint angles ``q*`` once, by inverse kinematics, when it
    is set (:meth:`ws_sim.piper_env.PiperReachEnv.set_goal`); the cost then needs no forward
    kinematics inside the rollouts, so it is the same for the oracle and for learned models:

        c_t = w_q |q_t - q*|^2 + w_qd |qd_t|^2 + w_u |u_t - u*|^2,   terminal step x ``w_terminal``,

    with ``u* = (q*, open gripper)``. The arm's joint angles and velocities are read through
    ``layout`` (a :class:`ws_sim.channels.StateLayout`: ``arm_q``, ``arm_qd``; by default that of
    :func:`ws_sim.piper.load_piper`'s model).

    Args:
        joint_goal_fn: returns ``q*`` ``(6,)`` in rad.
        gripper: the finger target the action term pulls toward, m.
        w_q, w_qd, w_u, w_terminal: the weights (defaults :data:`PIPER_COST_DEFAULTS`, the
            ``cost:`` of ``config/mppi_piper.yaml``).
        layout: the state's named views.
    """

    def __init__(self, joint_goal_fn, gripper: float = 0.035, w_q: float = 10.0, w_qd: float = 0.05,
                 w_u: float = 0.1, w_terminal: float = 5.0, layout: StateLayout | None = None):
        self.joint_goal_fn, self.gripper = joint_goal_fn, float(gripper)
        if layout is None:
            from ws_sim.channels import channels_from_model
            from ws_sim.piper import load_piper

            layout = StateLayout.from_channels(channels_from_model(load_piper()[0])[0], "piper")
        self.layout = layout
        self._q, self._qd = layout.arm_q, layout.arm_qd
        self.w_q, self.w_qd, self.w_u, self.w_terminal = w_q, w_qd, w_u, w_terminal

    def __call__(self, state: torch.Tensor, actions: torch.Tensor, states: torch.Tensor, t0: int = 0) -> torch.Tensor:
        dtype = states.dtype
        q_goal = torch.as_tensor(np.asarray(self.joint_goal_fn(), dtype=np.float64), dtype=dtype)
        u_goal = torch.cat([q_goal, torch.tensor([self.gripper], dtype=dtype)])
        c = (self.w_q * (states[..., self._q] - q_goal).square().sum(-1) + self.w_qd * states[..., self._qd].square().sum(-1)
             + self.w_u * (actions - u_goal).square().sum(-1))
        c[:, -1] = c[:, -1] * self.w_terminal
        return c.sum(1)
