"""Learning from corrections (issue 8): a progress value function, advantage-conditioned training,
and HG-DAgger in simulation. Spec: seed 004, Innovation 3 (advantage-conditioned human-in-the-loop
learning with DAgger-style on-policy collection and value prediction).

Value (:class:`ValueNet`, :func:`train_value`). The value of a frame is the task progress still
to make: ``V_t = -(T - t) / T_max`` on a successful episode of ``T`` steps (0 at the success,
``-1`` a whole episode away) and ``V_t = -(T - t) / T_max - failure_penalty`` on a failed one
(failure is worse than any success). A small convolutional network regresses it from the frame
(RGB-D) and the joint state, on every episode at hand: demonstrations, autonomous rollouts and
interventions.

Advantage (:func:`advantages`). With a reward of ``-1 / T_max`` per step, the ``n``-step
advantage of the action at ``t`` is ``A_t = -n' / T_max + V_{t+n'} - V_t`` (``n' = min(n, T -
t)``; at the episode's end ``V`` is its terminal value, 0 or ``-failure_penalty``); ``n`` at
least the episode's length gives the Monte-Carlo advantage, the return actually obtained from
``t`` minus ``V_t`` (the default of :func:`label_episodes`: with the few hundred episodes at
hand, the 10-step advantage was mostly the value's noise).

Cross-fitting (:func:`label_episodes`). The value that labels an episode is fitted on the other
episodes (``folds`` disjoint folds), never on the episode itself: fitted in-sample, the small
network memorised each episode's outcome, so a failed rollout's steps looked as good as a
successful one's (10-step advantages positive on 41 % of the policy's steps in failed and in
successful rollouts alike). With two folds and Monte-Carlo advantages, 1 % of the policy's
steps in failed rollouts were labelled improvements, against 55 % in rollouts that succeeded
without help (README, "Human in the loop").
:func:`improvement_indicators` binarises it: ``I_t = 1`` where ``A_t > threshold`` and wherever a
human (or the expert standing in for one) corrected the policy or demonstrated successfully (a
failed demonstration is judged by its advantages, like the policy's steps); the policy is trained conditioned on ``I_t``
(dropped to "unknown" for a share of windows, so it also runs unconditioned) and runs with
``I = 1`` (:attr:`ws_policy.model.PolicyConfig.indicator`).

DAgger (:func:`gated_rollout`, :func:`dagger`). The current policy runs; the scripted expert
shadows it and takes over when the state drifts from what it would do (HG-DAgger's gating,
Kelly et al. 2019; :class:`GatedExpert`): the policy heads off the expert's plan, stalls, or
disagrees on the gripper. It hands back once it has acted ``min_expert_steps`` steps and the
two agree again. Every step is kept with who acted; the data aggregate, the value function is
refitted, the policy retrains, and each round's policy is evaluated autonomously on fixed
seeds. With a privileged teacher (:class:`PrivilegedTeacher`, :func:`teacher_rollout`) the
rounds are plain DAgger instead: the image policy runs alone, a policy that reads the object poses
labels every state it visits, and the image policy clones the labels.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn as nn

from .data import MAX_DEPTH, DemoDataset, Episode

__all__ = ["PrivilegedTeacher", "teacher_rollout", "evaluate_autonomous", "episode_limit", "retrain", "ValueNet", "value_targets", "train_value", "predict_values", "FittedValues", "fit_values", "advantages", "improvement_indicators",
           "GatedExpert", "gated_rollout", "DaggerConfig", "dagger", "label_episodes"]


# --- value ---------------------------------------------------------------------------------------
def value_targets(episode: Episode, max_steps: int, failure_penalty: float = 1.0) -> np.ndarray:
    """Progress targets ``(T+1,)`` of an episode's frames (see the module docstring).

    Raises:
        ValueError: ``max_steps`` not positive.
    """
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    T = len(episode.actions)
    v = -(T - np.arange(T + 1)) / max_steps
    return (v if episode.success else v - failure_penalty).astype(np.float32)


class ValueNet(nn.Module):
    """``V(frame, joints)``: four stride-2 convolutions over RGB-D, then an MLP with the joint state.

    Inputs: ``rgb (B, S, S, 3)`` uint8, ``depth (B, S, S)`` metres, ``qpos (B, 8)`` rad; output ``(B,)``.
    """

    def __init__(self, image_size: int = 64, state_dim: int = 8, width: int = 32):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
        w = width
        self.image_size, self.state_dim, self.width = image_size, state_dim, width
        self.conv = nn.Sequential(nn.Conv2d(4, w, 5, 2, 2), nn.GELU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.GELU(), nn.Conv2d(2 * w, 2 * w, 3, 2, 1),
                                  nn.GELU(), nn.Flatten(), nn.Linear(2 * w * (image_size // 16) ** 2, 128))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(128 + state_dim, 128), nn.GELU(), nn.Linear(128, 1))

    def forward(self, rgb, depth, qpos) -> torch.Tensor:
        dev = self.head[-1].weight.device  # arrays in, on the network's device
        x = torch.cat([torch.as_tensor(rgb, device=dev).float().permute(0, 3, 1, 2) / 127.5 - 1,
                       torch.as_tensor(depth, device=dev).float()[:, None] / MAX_DEPTH * 2 - 1], dim=1)
        return self.head(torch.cat([self.conv(x), torch.as_tensor(qpos, device=dev).float()], dim=1))[:, 0]


def train_value(episodes: list[Episode], max_steps: int, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3,
                failure_penalty: float = 1.0, seed: int = 0, progress=None,
                device: str = "cpu") -> tuple[ValueNet, dict]:
    """Fit a :class:`ValueNet` to :func:`value_targets` on every frame of ``episodes`` (MSE, AdamW),
    on ``device`` (``"cpu"``, ``"cuda"``).

    Returns:
        ``(net in eval mode on the CPU, history)`` with the per-step losses.

    Raises:
        ValueError: no episodes.
    """
    if not episodes:
        raise ValueError("train_value needs at least one episode")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ValueNet(image_size=episodes[0].rgb.shape[1]).to(device)
    targets = [value_targets(e, max_steps, failure_penalty) for e in episodes]
    index = np.array([(i, t) for i, e in enumerate(episodes) for t in range(len(e.rgb))])
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    losses = []
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        pick = index[rng.integers(len(index), size=batch_size)]
        rgb = np.stack([episodes[i].rgb[t] for i, t in pick])
        depth = np.stack([episodes[i].depth[t] for i, t in pick]).astype(np.float32)
        qpos = np.stack([episodes[i].qpos[t] for i, t in pick])
        y = torch.as_tensor(np.array([targets[i][t] for i, t in pick]), device=device)
        loss = (net(rgb, depth, qpos) - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
    net.to("cpu").eval()
    return net, {"loss": losses}


@torch.no_grad()
def predict_values(net: ValueNet, episode: Episode, batch: int = 256) -> np.ndarray:
    """``V`` of every frame of an episode, ``(T+1,)``."""
    out = []
    for s in range(0, len(episode.rgb), batch):
        sl = slice(s, s + batch)
        out.append(net(episode.rgb[sl], episode.depth[sl].astype(np.float32), episode.qpos[sl]).numpy())
    return np.concatenate(out)


def advantages(values: np.ndarray, success: bool, max_steps: int, n: int = 10,
               failure_penalty: float = 1.0) -> np.ndarray:
    """``n``-step advantages ``(T,)`` of an episode's actions from its frames' values ``(T+1,)``
    (see the module docstring; the last frame's value is replaced by the terminal value).

    Raises:
        ValueError: ``n`` < 1 or fewer than two values.
    """
    if n < 1 or len(values) < 2:
        raise ValueError(f"need n >= 1 and at least two values, got n={n}, {len(values)} values")
    v = np.asarray(values, dtype=np.float64).copy()
    T = len(v) - 1
    v[T] = 0.0 if success else -failure_penalty
    t = np.arange(T)
    ahead = np.minimum(t + n, T)
    return (-(ahead - t) / max_steps + v[ahead] - v[t]).astype(np.float32)


def improvement_indicators(adv: np.ndarray, actor: np.ndarray | None, threshold: float = 0.0) -> np.ndarray:
    """``I_t`` ``(T,)`` int8: 1 where ``A_t > threshold`` or a human (expert) acted (``actor`` 1)."""
    ind = (np.asarray(adv) > threshold).astype(np.int8)
    if actor is not None:
        ind[np.asarray(actor) > 0] = 1
    return ind


@dataclasses.dataclass
class FittedValues:
    """Cross-fitted values of a set of episodes (:func:`fit_values`): ``nets[fold[i]]`` never saw episode ``i``.

    Attributes:
        nets: one value network per fold. fold: ``(N,)`` each episode's fold. losses: each fit's final loss.
    """

    nets: list
    fold: np.ndarray
    losses: list[float]


def fit_values(episodes: list[Episode], max_steps: int, value_steps: int = 1000, seed: int = 0, progress=None,
               folds: int = 2, device: str = "cpu") -> FittedValues:
    """The values :func:`label_episodes` labels with, fitted once (``value_steps`` steps per fold; see there);
    pass them back as its ``values`` to label the same episodes again (other actors, horizons or thresholds)
    without refitting.

    Raises:
        ValueError: ``folds`` < 1 or more folds than episodes.
    """
    if folds < 1 or folds > len(episodes):
        raise ValueError(f"folds must be between 1 and the {len(episodes)} episodes, got {folds}")
    fold = np.random.default_rng(seed).permutation(len(episodes)) % folds
    nets, losses = [], []
    for k in range(folds):
        train = [e for e, f in zip(episodes, fold) if f != k] if folds > 1 else episodes
        net, hist = train_value(train, max_steps, steps=value_steps, seed=seed + k, progress=progress, device=device)
        nets.append(net)
        losses.append(float(np.mean(hist["loss"][-50:])))
    return FittedValues(nets, fold, losses)


def label_episodes(episodes: list[Episode], max_steps: int, value_steps: int = 1000, n: int | None = None,
                   threshold: float = 0.0, seed: int = 0, progress=None, folds: int = 2,
                   device: str = "cpu", values: FittedValues | None = None) -> tuple[list[np.ndarray], dict]:
    """Improvement indicators of ``episodes`` (one ``(T,)`` array per episode; an episode without
    ``actor`` counts as all-human, e.g. demonstrations), with a summary (value loss, share of
    positive policy steps, and of positive steps in failed demonstrations).

    A human's steps are labelled positive where the human corrected the policy (an episode with
    policy steps) or succeeded; a failed attempt made by a human alone (a failed demonstration,
    e.g. ``ws policy collect --failures``) is labelled by its advantages, as the policy's steps are.

    Args:
        n: advantage horizon, steps (None: to the episode's end, Monte-Carlo).
        folds: cross-fitting folds (module docstring): each episode is labelled by a value fitted
            on the other folds, ``value_steps`` steps each; 1 fits one value on everything and
            labels in-sample.
        device: where the values train (:func:`train_value`).
        values: the values of these same episodes from :func:`fit_values` (then ``value_steps``,
            ``folds``, ``seed`` and ``device`` are not used: nothing is fitted).

    Raises:
        ValueError: ``folds`` < 1 or more folds than episodes; ``values`` fitted on another number of episodes.
    """
    if values is None:
        values = fit_values(episodes, max_steps, value_steps, seed=seed, progress=progress, folds=folds, device=device)
    elif len(values.fold) != len(episodes):
        raise ValueError(f"values fitted on {len(values.fold)} episodes cannot label {len(episodes)}")
    n = n or max(len(e.actions) for e in episodes)
    nets, fold, losses = values.nets, values.fold, values.losses
    out, pos, total, failed_pos, failed_total = [], 0, 0, 0, 0
    for e, f in zip(episodes, fold):
        actor = e.actor if e.actor is not None else np.ones(len(e.actions), np.int8)
        adv = advantages(predict_values(nets[f], e), e.success, max_steps, n)
        # a failed attempt made by a human alone (a failed demonstration) is not a correction: its
        # steps are judged by their advantages like the policy's; a human correcting the policy is
        # labelled positive (seed 004's human-in-the-loop data)
        failed_attempt = not e.success and not (actor == 0).any()
        ind = improvement_indicators(adv, None if failed_attempt else actor, threshold)
        policy_steps = actor == 0
        pos += int(ind[policy_steps].sum())
        total += int(policy_steps.sum())
        if failed_attempt:
            failed_pos += int(ind.sum())
            failed_total += len(ind)
        out.append(ind)
    return out, {"value_loss": float(np.mean(losses)), "policy_steps": total,
                 "policy_steps_positive": pos / total if total else None,
                 "failed_demo_steps": failed_total,
                 "failed_demo_steps_positive": failed_pos / failed_total if failed_total else None}


# --- HG-DAgger in simulation ------------------------------------------------------------------------
class GatedExpert:
    """The scripted expert standing in for a teleoperator, with HG-DAgger gating.

    While the policy acts, the expert shadows it from the arm's actual state (its plan advances
    as the real tool comes within ``reach_m`` of each waypoint, so a policy that cuts a corner is
    still on the plan) and takes over when the policy

    * heads off the plan: the tool target it commands is more than ``drift_m`` from the plan's
      current leg (the segment from the last waypoint to the next) and from the leg after it
      (a target a little ahead of the expert's bookkeeping is not a drift),
    * stalls: the tool has come less than 1 cm closer to the next waypoint over ``stall_steps``
      steps while still more than 2 cm from it, or
    * disagrees on the gripper (open against closed) for ``grip_steps`` steps in a row.

    A slower policy on the right path is left alone. The defaults were tuned so that the gate acts
    where a teleoperator would: watching the 50-demonstration action-only policy alone on 40
    seeds, it would have taken over in all 16 failures and 5 of 24 successes (the first gate,
    8 mm reach, 30 stall steps and 5 gripper steps, took over in every episode, 23-40 steps in;
    README, "Human in the loop"). Once in control, the expert continues from
    where the arm is (replanning from the objects' current poses if the policy moved the cube),
    finishes the leg it took over on, and hands back after at least
    ``min_expert_steps`` steps when the policy's proposal is within ``drift_m / 2`` of the plan
    again and the gripper agrees.

    Raises:
        ValueError: non-positive thresholds.
    """

    def __init__(self, env, drift_m: float = 0.03, min_expert_steps: int = 8, stall_steps: int = 40,
                 grip_steps: int = 20, reach_m: float = 0.02, seed: int = 0):
        import mujoco

        from ws_sim.piper_tasks import ScriptedExpert

        if drift_m <= 0 or reach_m < 0 or min_expert_steps < 1 or stall_steps < 2 or grip_steps < 1:
            raise ValueError("drift_m must be positive, reach_m >= 0, min_expert_steps and grip_steps >= 1, "
                             "stall_steps >= 2")
        self.env = env.unwrapped
        self.expert = ScriptedExpert(self.env, seed=seed)
        self.drift_m, self.min_steps = float(drift_m), int(min_expert_steps)
        self.stall_steps, self.grip_steps, self.reach_m = int(stall_steps), int(grip_steps), float(reach_m)
        self._data = mujoco.MjData(self.env.model)
        self._site = self.env.model.site("tcp").id
        self.human = False

    def reset(self) -> None:
        self.expert.reset()
        self.human = False
        self._held = 0
        self._grip_bad = 0
        self._dist: list[float] = []
        self._goal = None
        self.reasons = {"drift": 0, "stall": 0, "gripper": 0}

    def _tool(self, action) -> np.ndarray:
        import mujoco

        self._data.qpos[:6] = action[:6]
        mujoco.mj_kinematics(self.env.model, self._data)
        return self._data.site_xpos[self._site].copy()

    @staticmethod
    def _to_segment(p, a, b) -> float:
        ab = b - a
        u = float(np.clip((p - a) @ ab / max(ab @ ab, 1e-12), 0.0, 1.0))
        return float(np.linalg.norm(p - (a + u * ab)))

    def decide(self, policy_action: np.ndarray) -> tuple[np.ndarray, int]:
        """The action to execute and who chose it (1 the expert, 0 the policy)."""
        if not self.human:
            self.expert.sync(self.reach_m)
        a_e = self.expert.act()
        start, goal, grip = self.expert.leg()
        nxt = self.expert.leg(ahead=1)
        target = self._tool(policy_action)
        drift = min(self._to_segment(target, start, goal), self._to_segment(target, nxt[0], nxt[1]))
        grip_bad = min(abs(float(policy_action[6]) - grip), abs(float(policy_action[6]) - nxt[2])) > 0.0175
        self._grip_bad = self._grip_bad + 1 if grip_bad else 0
        if self.human:
            self._held += 1
            leg_done = not np.array_equal(goal, self._took_at)
            if leg_done and self._held >= self.min_steps and drift < self.drift_m / 2 and not grip_bad:
                self.human, self._dist = False, []
            return (a_e, 1) if self.human else (np.asarray(policy_action, dtype=np.float64), 0)
        to_goal = float(np.linalg.norm(self.env.tcp - goal))
        if self._goal is None or not np.array_equal(goal, self._goal):
            self._goal, self._dist = goal, []  # a new leg: progress is counted from here
        self._dist = (self._dist + [to_goal])[-self.stall_steps:]
        stalled = (len(self._dist) == self.stall_steps and to_goal > 0.02
                   and self._dist[0] - to_goal < 0.01)
        reason = "drift" if drift > self.drift_m else "stall" if stalled else \
            "gripper" if self._grip_bad >= self.grip_steps else None
        if reason is None:
            return np.asarray(policy_action, dtype=np.float64), 0
        self.reasons[reason] += 1
        self.expert.replan()  # the policy may have moved the cube: plan from what is there now
        a_e = self.expert.act()
        self.human, self._held, self._took_at = True, 0, self.expert.leg()[1]
        return a_e, 1


def gated_rollout(env, executor, gate: GatedExpert | None, seed: int) -> Episode:
    """One episode of the policy (through ``executor``, a :class:`ws_policy.executor.ChunkExecutor`)
    with the gated expert ready to take over; returns it with ``actor`` per step. ``gate=None``
    runs the policy alone (an autonomous rollout: ``actor`` all 0)."""
    obs, info = env.reset(seed=seed)
    executor.reset()
    if gate is not None:
        gate.reset()
    frames, actions, actors = [obs], [], []
    for step in range(env.max_episode_steps):
        # the executor keeps planning from the live observation while the expert acts, so the policy
        # resumes from the state the expert left
        proposal = executor.act(step, obs)
        action, actor = gate.decide(proposal) if gate is not None else (proposal, 0)
        obs, _, terminated, truncated, info = env.step(action)
        frames.append(obs)
        actions.append(np.asarray(action, dtype=np.float32))
        actors.append(actor)
        if terminated or truncated:
            break
    return Episode.from_frames(frames, actions, info["instruction"], bool(info["success"]),
                               failure="" if info["success"] else "policy", seed=seed, actor=actors)


class PrivilegedTeacher:
    """A teacher that labels any state it is shown: a policy that reads the simulator's object poses (``ws policy
    train --privileged``), or any ``obs -> (chunk, 7)`` callable. DAgger (Ross et al. 2011) with such a teacher
    labels every state the student visits with the teacher's action there; the student, which sees only
    images, learns to act where its own mistakes lead (the privileged-teacher recipe of Chen et al. 2019,
    "Learning by cheating").

    Args:
        policy: a privileged policy network, or a callable ``obs -> (chunk, 7)``.

    Raises:
        ValueError: a policy network that does not read the object poses.
    """

    def __init__(self, policy):
        cfg = getattr(policy, "cfg", None)
        if cfg is not None:
            if not getattr(cfg, "privileged", False):
                raise ValueError("the teacher must read the object poses ('ws policy train --privileged'); this "
                                 "policy sees only what the student sees")
            policy = _runner(policy)
        self.policy = policy

    def label(self, obs: dict) -> np.ndarray:
        """The teacher's action ``(7,)`` for ``obs``: the first of its chunk."""
        return np.asarray(self.policy(obs), dtype=np.float32)[0]


def teacher_rollout(env, executor, teacher: PrivilegedTeacher, seed: int) -> Episode:
    """One episode of the student (through ``executor``) with every step labelled by ``teacher``: the frames are
    the student's, each step's action is the teacher's label at that frame (``actor`` 1 throughout: not the
    student's own action), and ``success`` is the student's outcome."""
    obs, info = env.reset(seed=seed)
    executor.reset()
    frames, labels = [obs], []
    for step in range(env.max_episode_steps):
        labels.append(teacher.label(obs))
        obs, _, terminated, truncated, info = env.step(executor.act(step, obs))
        frames.append(obs)
        if terminated or truncated:
            break
    return Episode.from_frames(frames, labels, info["instruction"], bool(info["success"]),
                               failure="" if info["success"] else "policy", seed=seed, actor=np.ones(len(labels)))


@dataclasses.dataclass
class DaggerConfig:
    """Options of :func:`dagger` (the CLI's flags)."""

    rounds: int = 3
    episodes_per_round: int = 20
    autonomous_per_round: int = 0  # rollouts of the policy alone added to the aggregate each round
    eval_episodes: int = 20
    eval_seed: int = 1000
    rollout_seed: int = 5000
    train_steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    conditioned: bool = True  # advantage-conditioned (else plain behaviour cloning on all aggregated steps)
    successes_only: bool = False  # plain behaviour cloning on successful episodes only (filtered BC)
    indicator_on_actions: bool = False  # the indicator also joins every action token (PolicyConfig)
    value_steps: int = 1000
    value_folds: int = 2
    n_step: int | None = None  # None: Monte-Carlo advantages (to the episode's end)
    threshold: float = 0.0
    drift_m: float = 0.03
    min_expert_steps: int = 8
    stall_steps: int = 40
    grip_steps: int = 20
    reach_m: float = 0.02
    latency: int = 1
    seed: int = 0
    device: str = "cpu"  # where the value and the policy train (rollouts and evaluations run on the CPU)

    def __post_init__(self):
        if self.rounds < 1 or self.episodes_per_round < 1 or self.eval_episodes < 1 or self.train_steps < 1:
            raise ValueError("rounds, episodes_per_round, eval_episodes and train_steps must be >= 1")
        if self.autonomous_per_round < 0:
            raise ValueError(f"autonomous_per_round must be >= 0, got {self.autonomous_per_round}")
        if self.value_folds < 1 or (self.n_step is not None and self.n_step < 1):
            raise ValueError("value_folds and n_step (None: Monte-Carlo) must be >= 1")
        if self.successes_only and self.conditioned:
            raise ValueError("successes_only is a plain behaviour-cloning baseline (filtered BC); the "
                             "advantage-conditioned policy trains on every episode")


def _runner(model):
    from .train import PolicyRunner

    return PolicyRunner(model)


def _executor(model, env, latency: int):
    from .executor import ChunkExecutor

    chunk = model.cfg.chunk
    return ChunkExecutor(_runner(model), chunk=chunk, replan_every=max(1, chunk // 2), ensemble_m=0.1,
                         latency_steps=latency, dt=env.dt, hold=env.neutral_action)


def retrain(model, episodes: list[Episode], cfg: DaggerConfig, max_steps: int, progress=None, log=print,
            value_progress=None):
    """One retraining on the aggregated ``episodes``: advantage-conditioned (value fitted, indicators
    computed) or plain behaviour cloning (on every episode, or with ``cfg.successes_only`` on the
    successful ones), fine-tuned from ``model``. Returns ``(model, info)``."""
    from .train import train_policy

    pcfg = dataclasses.replace(model.cfg, indicator=cfg.conditioned,
                               indicator_on_actions=cfg.conditioned and cfg.indicator_on_actions)
    info = {}
    if cfg.conditioned:
        indicators, info = label_episodes(episodes, max_steps, value_steps=cfg.value_steps, n=cfg.n_step,
                                          threshold=cfg.threshold, seed=cfg.seed, progress=value_progress,
                                          folds=cfg.value_folds, device=cfg.device)
        failed = (f"; {info['failed_demo_steps']} steps of failed demonstrations, "
                  f"{100 * info['failed_demo_steps_positive']:.0f} % labelled improvements"
                  if info["failed_demo_steps"] else "")
        log(f"  value fitted (loss {info['value_loss']:.4f}); {info['policy_steps']} policy steps, "
            f"{100 * (info['policy_steps_positive'] or 0):.0f} % labelled improvements{failed}")
        data = DemoDataset(episodes, chunk=pcfg.chunk, frames=pcfg.frames, stride=pcfg.stride, successes_only=False,
                           indicators=indicators)
    else:
        data = DemoDataset(episodes, chunk=pcfg.chunk, frames=pcfg.frames, stride=pcfg.stride,
                           successes_only=cfg.successes_only)
    new, hist = train_policy(pcfg, data, steps=cfg.train_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                             init=model, progress=progress, normalizer=model.normalizer, device=cfg.device)
    info["train_seconds"] = round(hist["seconds"], 1)
    return new, info


def episode_limit(task: str) -> int:
    """The task's episode length in control steps (``T_max`` of the value targets)."""
    return 240 if task == "stack" else 160


def evaluate_autonomous(model, attrs: dict, cfg: DaggerConfig) -> dict:
    """The policy alone (no expert) on ``cfg.eval_episodes`` seeds from ``cfg.eval_seed``, in the
    demonstrations' task, camera and workspace; :func:`ws_policy.evaluate.evaluate_policy`'s report."""
    from .evaluate import evaluate_policy

    return evaluate_policy(_runner(model), attrs["task"], cfg.eval_episodes, cfg.eval_seed, int(attrs["image_size"]),
                           camera=str(attrs.get("camera", "task")), chunk=model.cfg.chunk, latency=cfg.latency,
                           out_dir=None, video=False, workspace=str(attrs.get("workspace", "full")))


def dagger(model, demos: list[Episode], attrs: dict, cfg: DaggerConfig, evaluate=None, progress=None,
           log=print, on_round=None, value_progress=None, teacher: PrivilegedTeacher | None = None) -> dict:
    """HG-DAgger rounds in simulation (see the module docstring); with ``teacher``, DAgger with a privileged
    teacher instead: the student runs alone and the teacher labels every step (:func:`teacher_rollout`).

    Args:
        model: the starting policy (a trained network predicting actions).
        demos: the demonstrations it was trained on (they stay in the aggregate, as human data).
        attrs: their file attributes (task, image size, camera, workspace).
        evaluate: ``evaluate(model) -> report`` (default: :func:`ws_policy.evaluate.evaluate_policy`
            on ``cfg.eval_episodes`` seeds from ``cfg.eval_seed``).
        on_round: optional ``on_round(round, model, aggregate, record)`` (checkpoints, files).

    Returns:
        ``{"rounds": [...], "aggregate": episodes, "model": the last policy}``: per round, the
        autonomous success rate of the policy entering it, the rollouts' interventions (share of
        expert steps, take-over reasons) and outcomes, the value fit and the data size.
    """
    from ws_sim.piper_tasks import PiperManipEnv

    task, size = attrs["task"], int(attrs["image_size"])
    workspace, camera = str(attrs.get("workspace", "full")), str(attrs.get("camera", "task"))
    if teacher is not None and (cfg.conditioned or cfg.successes_only):
        raise ValueError("with a privileged teacher every step is a teacher's label: retrain by plain behaviour "
                         "cloning on all of them (conditioned=False, successes_only=False)")
    if evaluate is None:
        def evaluate(m):
            return evaluate_autonomous(m, attrs, cfg)
    env = PiperManipEnv(task, render_mode="rgbd", width=size, height=size, camera=camera, workspace=workspace,
                        wrist=bool(getattr(getattr(model, "cfg", None), "wrist", False)))
    max_steps = env.max_episode_steps
    aggregate = list(demos)
    rounds = []
    try:
        for r in range(cfg.rounds + 1):
            t0 = time.perf_counter()
            rep = evaluate(model)
            rec = {"round": r, "success_rate": rep["success_rate"], "successes": rep["successes"],
                   "episodes": rep["episodes"], "ci95": rep["ci95"], "failure_modes": rep.get("failure_modes")}
            log(f"round {r}: autonomous success {rep['successes']}/{rep['episodes']} (95 % CI {rep['ci95']})")
            if r == cfg.rounds:
                rec["seconds"] = round(time.perf_counter() - t0, 1)
                rounds.append(rec)
                if on_round is not None:
                    on_round(r, model, aggregate, rec)
                break
            executor = _executor(model, env, cfg.latency)
            gate = GatedExpert(env, drift_m=cfg.drift_m, min_expert_steps=cfg.min_expert_steps,
                               stall_steps=cfg.stall_steps, grip_steps=cfg.grip_steps, reach_m=cfg.reach_m,
                               seed=cfg.seed + r)
            new, alone, reasons = [], [], {}
            try:
                for i in range(cfg.episodes_per_round):
                    seed = cfg.rollout_seed + r * cfg.episodes_per_round + i
                    if teacher is not None:
                        new.append(teacher_rollout(env, executor, teacher, seed))
                        continue
                    new.append(gated_rollout(env, executor, gate, seed=seed))
                    reasons = {k: reasons.get(k, 0) + v for k, v in gate.reasons.items()}
                # autonomous rollouts on seeds of their own, after the gated block's
                first = cfg.rollout_seed + cfg.rounds * cfg.episodes_per_round + r * cfg.autonomous_per_round
                for i in range(cfg.autonomous_per_round):
                    alone.append(gated_rollout(env, executor, None, seed=first + i))
            finally:
                executor.wait_for_inference()
            steps = sum(len(e.actions) for e in new)
            human = sum(int(e.actor.sum()) for e in new)
            rec.update(rollouts=len(new), rollout_successes=sum(e.success for e in new),
                       expert_share=round(human / max(steps, 1), 3),
                       episodes_with_intervention=sum(bool(e.actor.any()) for e in new), takeovers=reasons,
                       autonomous_rollouts=len(alone), autonomous_successes=sum(e.success for e in alone))
            log(f"  rollouts: {rec['rollout_successes']}/{len(new)} succeeded with help; the expert acted in "
                f"{rec['episodes_with_intervention']} episodes, {100 * rec['expert_share']:.0f} % of steps; "
                f"take-overs: {reasons}")
            if alone:
                log(f"  autonomous rollouts: {rec['autonomous_successes']}/{len(alone)} succeeded")
            aggregate += new + alone
            model, info = retrain(model, aggregate, cfg, max_steps, progress=progress, log=log,
                                  value_progress=value_progress)
            rec.update(info, aggregate_episodes=len(aggregate), seconds=round(time.perf_counter() - t0, 1))
            rounds.append(rec)
            if on_round is not None:
                on_round(r, model, aggregate, rec)
    finally:
        env.close()
    return {"rounds": rounds, "aggregate": aggregate, "model": model}
