"""Expert locomotion policies for Hopper-v5 and Walker2d-v5, trained with stable-baselines3.

D4RL cannot be downloaded here, so WorldScape makes its own expert. :func:`train_expert`
trains TD3 or SAC (stable-baselines3, a well-kept library) in chunks, checkpointing after each
one; running it again on the same ``out_dir`` resumes from the last checkpoint.
:func:`export_reference` rolls the trained policy out in the real MuJoCo environment and writes
what MPPI needs (``[qpos, qvel]`` reference episodes, the expert's action statistics, the actor
weights and a JSON of how they were made); :func:`load_expert` rebuilds the deterministic policy
from those weights in plain PyTorch (:class:`ExpertActor`), without SB3.

Checkpoints never run code when loaded: SB3's own ``.zip`` files are cloudpickle, so they are
neither written nor read. A run directory holds

* ``state.json``: the commit point (env, algo, seed, hyper-parameters, ``num_timesteps``, RNG
  states, learning curve, the names of the files below); written last, atomically;
* ``params_<steps>.pt``: ``model.get_parameters()`` (policy and optimizer state dicts) plus
  SAC's ``log_ent_coef`` and torch's RNG state (``torch.load(weights_only=True)``);
* ``buffer_<steps>.npz``: the replay buffer's arrays (``np.load(allow_pickle=False)``);
* ``best_actor_<steps>.pt``: the actor of the best evaluation so far;
* ``curve.csv`` / ``curve.png``: the learning curve (deterministic return over 5 episodes).

Every file goes through a temporary sibling and a rename, and files of older chunks are removed
only after ``state.json`` names the new ones, so a kill at any moment loses at most one chunk.
A resumed run starts a new episode (the interrupted one is not continued).

Measured cost (TD3, default [400, 300] networks, one thread, 2-core machine shared with other
jobs): about 70-75 environment+gradient steps per second (SAC: about 50), i.e. about 4 hours
for 1M steps; an evaluation (5 episodes of up to 1000 steps) takes 5-10 s.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ws_sim.atomic import atomic_write
from ws_sim.envs import ENVIRONMENTS

from .errors import MPPIError

__all__ = ["ExpertError", "ExpertActor", "HYPERPARAMS", "SHIPPED", "train_expert", "export_reference",
           "load_expert", "load_run", "evaluate_expert", "actor_state_dict", "ExpertCritic", "critic_state_dict",
           "load_expert_critic"]

log = logging.getLogger(__name__)

RUN_FORMAT = "worldscape-expert-run"
EXPERT_FORMAT = "worldscape-expert"
FORMAT_VERSION = 1
EVAL_SEED = 10_000  # evaluation episodes during training reset with EVAL_SEED + i (same for every chunk)
MAX_STEPS = 1000  # Gymnasium's episode limit for Hopper-v5 / Walker2d-v5

#: rl-baselines3-zoo's tuned values for MuJoCo (hyperparams/td3.yml and sac.yml, "mujoco-defaults",
#: used for Hopper and Walker2d; https://github.com/DLR-RM/rl-baselines3-zoo). Everything else is
#: SB3's default (TD3: net_arch [400, 300], lr 1e-3, batch 256, train_freq 1, policy_delay 2;
#: SAC: net_arch [256, 256], lr 3e-4, batch 256, ent_coef "auto").
HYPERPARAMS: dict[str, dict] = {
    "td3": {"learning_starts": 10_000, "noise_std": 0.1, "buffer_size": 1_000_000},
    "sac": {"learning_starts": 10_000, "buffer_size": 1_000_000},
}

#: experts shipped with the package (``ws expert export``; see each directory's expert.json)
SHIPPED = {name: Path(__file__).parent / "experts" / name for name in ENVIRONMENTS}


class ExpertError(MPPIError):
    """A run directory or an expert file that cannot be used (the message names the path)."""


# ----------------------------------------------------------------------------- small helpers


def _env_id(env_name: str) -> tuple[str, str]:
    key = env_name.lower()
    by_id = {v.lower(): k for k, v in ENVIRONMENTS.items()}
    key = by_id.get(key, key)
    if key not in ENVIRONMENTS:
        raise ExpertError(f"no expert for environment {env_name!r}; choose one of {sorted(ENVIRONMENTS)}")
    return key, ENVIRONMENTS[key]


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _torch_load(path: Path, what: str):
    from ws_worldmodel.checkpoint import safe_torch_load

    return safe_torch_load(path, error=ExpertError, what=what)


def _savez(path: Path, compressed: bool = False, **arrays) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the temporary name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    atomic_write(path, write)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it (the shipped files name no home directory)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _machine() -> dict:
    return {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(), "python": platform.python_version()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("stable-baselines3", "torch", "gymnasium", "mujoco", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = None
    return out


def _rollout(env, act: Callable[[np.ndarray], np.ndarray], seed: int, max_steps: int = MAX_STEPS,
             record: bool = False) -> dict:
    """One episode in a Gymnasium MuJoCo env; with ``record`` the states ``[qpos, qvel]`` are read
    from ``env.unwrapped.data`` at every step (Hopper's observation drops root x)."""
    data = env.unwrapped.data
    obs, _ = env.reset(seed=int(seed))
    states = [np.r_[data.qpos, data.qvel]] if record else None
    actions, rewards = [], []
    for _ in range(max_steps):
        a = np.asarray(act(obs), dtype=np.float32)  # applied exactly as saved
        obs, r, terminated, truncated, _ = env.step(a)
        rewards.append(float(r))
        if record:
            actions.append(a)
            states.append(np.r_[data.qpos, data.qvel])
        if terminated or truncated:
            break
    out = {"seed": int(seed), "return": float(np.sum(rewards)), "length": len(rewards),
           "terminated": bool(terminated)}
    if record:
        out.update(states=np.asarray(states), actions=np.asarray(actions), rewards=np.asarray(rewards))
    return out


# ----------------------------------------------------------------------------- the SB3-free actor


class ExpertActor(nn.Module):
    """The expert's deterministic policy in plain PyTorch: an MLP (ReLU hidden layers, tanh
    output) mapping Gymnasium's observation to an action in the env's units.

    It reproduces SB3's ``model.predict(obs, deterministic=True)`` of TD3 (``actor.mu``) and SAC
    (``tanh(actor.mu(actor.latent_pi(obs)))``), rescaled from [-1, 1] to the action bounds.

    Attributes:
        meta: the file's description (env, algo, observation layout, how it was made).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], action_low, action_high,
                 meta: dict | None = None):
        super().__init__()
        layers, d = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers += [nn.Linear(d, act_dim), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32))
        self.meta = dict(meta or {})

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        a = self.net(obs.float())
        return self.action_low + 0.5 * (a + 1.0) * (self.action_high - self.action_low)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ``net.*`` weights (as :func:`actor_state_dict` keys them); every layer must be there."""
        self.load_state_dict({**state_dict, "action_low": self.action_low, "action_high": self.action_high})

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action (float32, ``(nu,)`` or ``(B, nu)``) for Gymnasium observation(s)."""
        return self(torch.as_tensor(np.asarray(obs, dtype=np.float32))).numpy()

    def observation(self, state: np.ndarray) -> np.ndarray:
        """Gymnasium's observation of a WorldScape state ``[qpos, qvel]`` (``(..., nq + nv)``):
        qpos without root x, qvel clipped, as Hopper-v5 / Walker2d-v5 compute it."""
        o = self.meta["observation"]
        s = np.asarray(state, dtype=np.float64)
        nq = int(o["nq"])
        pos = s[..., 1:nq] if o["exclude_x"] else s[..., :nq]
        return np.concatenate([pos, np.clip(s[..., nq:], -o["qvel_clip"], o["qvel_clip"])], axis=-1)

    def act_state(self, state: np.ndarray) -> np.ndarray:
        """Action for a WorldScape state ``[qpos, qvel]`` (what MPPI plans on)."""
        return self.act(self.observation(state))


class ExpertCritic(nn.Module):
    """The expert's first Q-network ``Q(obs, action)`` in plain PyTorch (SB3's ``critic.qf0``:
    ReLU hidden layers, linear output), and with its actor the state value
    ``V(s) = Q(obs(s), pi(obs(s)))``: the discounted return the expert expects from ``s``
    (discount ``gamma``, rewards in Gymnasium units). MPPI uses it as the value of a rollout's
    last state, as POLO (Lowrey et al. 2019) and TD-MPC (Hansen et al. 2022) use a learned value
    beyond the horizon.

    Attributes:
        actor: the :class:`ExpertActor` whose action ``V`` evaluates.
        gamma: the discount the critic was trained with.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], actor: "ExpertActor", gamma: float):
        super().__init__()
        layers, d = [], obs_dim + act_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers += [nn.Linear(d, 1)]
        self.net = nn.Sequential(*layers)
        self.actor = actor
        self.gamma = float(gamma)

    @torch.no_grad()
    def value_state(self, states: torch.Tensor) -> torch.Tensor:
        """``V`` of WorldScape states ``[qpos, qvel]``: ``(..., nq + nv) -> (...)``. The critic
        reads the action scaled to [-1, 1], as SB3 feeds it."""
        obs = torch.as_tensor(self.actor.observation(np.asarray(states.detach().cpu(), dtype=np.float64)),
                              dtype=torch.float32)
        a = self.actor.net(obs)  # the tanh output in [-1, 1]
        return self.net(torch.cat([obs, a], dim=-1))[..., 0].to(states.dtype)


def critic_state_dict(policy_state: dict) -> dict[str, torch.Tensor]:
    """``critic.qf0``'s weights from SB3's policy state dict, keyed as :class:`ExpertCritic`'s ``net``."""
    names = sorted({k.split(".")[2] for k in policy_state if k.startswith("critic.qf0.")}, key=int)
    return {f"net.{2 * j}.{p}": policy_state[f"critic.qf0.{i}.{p}"].detach().to(torch.float32).cpu().clone()
            for j, i in enumerate(names) for p in ("weight", "bias")}


def load_expert_critic(path: str | os.PathLike, actor: "ExpertActor | None" = None) -> ExpertCritic:
    """Load ``critic.pt`` written by :func:`export_reference` (beside ``actor.pt``).

    Args:
        path: ``critic.pt``, the expert's directory, or a shipped expert's name.
        actor: the expert's actor (default: loaded from the same directory).

    Raises:
        ExpertError: missing (an expert exported from a checkpoint other than the run's last has
            none), unsafe or foreign file.
    """
    p = Path(path)
    if not p.exists() and str(path).lower() in SHIPPED:
        p = SHIPPED[str(path).lower()]
    folder = p if p.is_dir() else p.parent
    if p.is_dir():
        p = p / "critic.pt"
    if not p.is_file():
        raise ExpertError(f"expert {folder} has no critic.pt (re-export it from a run whose last checkpoint is the "
                          "exported actor: 'ws expert export --which last')")
    payload = _torch_load(p, "expert critic")
    if not isinstance(payload, dict) or payload.get("format") != EXPERT_FORMAT + "-critic":
        raise ExpertError(f"{p} is not a WorldScape expert critic (written by 'ws expert export')")
    actor = actor if actor is not None else load_expert(folder)
    critic = ExpertCritic(payload["obs_dim"], payload["act_dim"], payload["hidden"], actor, payload["gamma"])
    critic.net.load_state_dict({k[len("net."):]: v for k, v in payload["state_dict"].items()})
    return critic.eval()


def actor_state_dict(policy_state: dict, algo: str) -> dict[str, torch.Tensor]:
    """The deterministic actor's weights from SB3's policy state dict (``get_parameters()["policy"]``),
    keyed as :class:`ExpertActor`'s ``net``."""
    if algo == "td3":
        names = sorted({k.split(".")[2] for k in policy_state if k.startswith("actor.mu.")}, key=int)
        layers = [f"actor.mu.{i}" for i in names]
    elif algo == "sac":
        names = sorted({k.split(".")[2] for k in policy_state if k.startswith("actor.latent_pi.")}, key=int)
        layers = [f"actor.latent_pi.{i}" for i in names] + ["actor.mu"]
    else:
        raise ExpertError(f"unknown algorithm {algo!r}")
    out = {}
    for j, name in enumerate(layers):
        for p in ("weight", "bias"):
            out[f"net.{2 * j}.{p}"] = policy_state[f"{name}.{p}"].detach().to(torch.float32).cpu().clone()
    return out


def _actor_payload(env_key: str, algo: str, sd: dict, env, info: dict) -> dict:
    u = env.unwrapped
    hidden = [int(sd[f"net.{2 * j}.weight"].shape[0]) for j in range(len(sd) // 2 - 1)]
    return {
        "format": EXPERT_FORMAT, "version": FORMAT_VERSION, "env": env_key, "env_id": ENVIRONMENTS[env_key],
        "algo": algo, "obs_dim": int(sd["net.0.weight"].shape[1]),
        "act_dim": int(sd[f"net.{2 * len(hidden)}.weight"].shape[0]), "hidden": hidden,
        "action_low": torch.as_tensor(env.action_space.low, dtype=torch.float32),
        "action_high": torch.as_tensor(env.action_space.high, dtype=torch.float32),
        "observation": {"nq": int(u.model.nq), "nv": int(u.model.nv), "qvel_clip": 10.0,
                        "exclude_x": bool(u._exclude_current_positions_from_observation)},
        "state_dict": sd, "info": info,
    }


def load_expert(path: str | os.PathLike) -> ExpertActor:
    """Load an expert written by :func:`export_reference` (no SB3, no pickled code).

    Args:
        path: ``actor.pt``, the directory holding it, or a shipped expert's name (``"hopper"``).

    Raises:
        ExpertError: missing, unsafe or foreign file.
    """
    p = Path(path)
    if not p.exists() and str(path).lower() in SHIPPED:
        p = SHIPPED[str(path).lower()]
    if p.is_dir():
        p = p / "actor.pt"
    payload = _torch_load(p, "expert")
    if not isinstance(payload, dict) or payload.get("format") != EXPERT_FORMAT:
        raise ExpertError(f"expert {p} is not a WorldScape expert file (written by 'ws expert export')")
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    actor = ExpertActor(payload["obs_dim"], payload["act_dim"], payload["hidden"], payload["action_low"],
                        payload["action_high"], meta)
    actor.load_weights(payload["state_dict"])
    return actor.eval()


def evaluate_expert(path: str | os.PathLike, episodes: int = 5, seed: int = 20_000,
                    max_steps: int = MAX_STEPS) -> list[dict]:
    """Deterministic returns of a shipped expert in the real MuJoCo env (episode i resets with seed + i)."""
    import gymnasium as gym

    actor = load_expert(path)
    env = gym.make(actor.meta["env_id"])
    try:
        return [_rollout(env, actor.act, seed + i, max_steps) for i in range(episodes)]
    finally:
        env.close()


# ----------------------------------------------------------------------------- training


def _make_model(algo: str, env, seed: int, hp: dict, device: str = "cpu"):
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    common = dict(learning_starts=int(hp["learning_starts"]), buffer_size=int(hp["buffer_size"]),
                  seed=int(seed), device=device, verbose=0)
    if algo == "td3":
        n = env.action_space.shape[0]
        noise = NormalActionNoise(np.zeros(n), float(hp["noise_std"]) * np.ones(n))
        return TD3("MlpPolicy", env, action_noise=noise, **common)
    if algo == "sac":
        return SAC("MlpPolicy", env, **common)
    raise ExpertError(f"unknown algorithm {algo!r}; choose td3 or sac")


_BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _save_buffer(buf, path: Path) -> None:
    n = buf.buffer_size if buf.full else buf.pos
    arrays = {k: getattr(buf, k)[:n] for k in _BUFFER_KEYS}
    _savez(path, pos=np.int64(buf.pos), full=np.bool_(buf.full), **arrays)


def _load_buffer(buf, path: Path) -> None:
    try:
        with np.load(path, allow_pickle=False) as f:
            n = f["observations"].shape[0]
            if n > buf.buffer_size:
                raise ExpertError(f"replay buffer {path} holds {n} transitions; the run's buffer_size is "
                                  f"{buf.buffer_size}")
            for k in _BUFFER_KEYS:
                getattr(buf, k)[:n] = f[k]
            buf.pos, buf.full = int(f["pos"]), bool(f["full"])
    except (OSError, KeyError, ValueError) as e:
        if isinstance(e, ExpertError):
            raise
        raise ExpertError(f"replay buffer {path} is unreadable: {e}") from e


def _rng_state() -> dict:
    st = np.random.get_state()
    pv = random.getstate()
    return {"numpy": [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])],
            "python": [pv[0], list(pv[1]), pv[2]]}


def _set_rng_state(rng: dict) -> None:
    n = rng["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = rng["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _read_state(run: Path) -> dict:
    path = run / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExpertError(f"{run} is not an expert run directory (no readable state.json): {e}") from e
    if not isinstance(state, dict) or state.get("format") != RUN_FORMAT:
        raise ExpertError(f"{path} is not a WorldScape expert run")
    return state


def _restore(model, run: Path, state: dict) -> dict:
    """Load the run's last checkpoint into ``model`` (weights, optimizers, SAC's entropy coefficient,
    replay buffer, step and update counters); returns the checkpoint dict."""
    path = run / state["files"]["params"]
    ck = _torch_load(path, "expert training checkpoint")
    try:
        model.set_parameters(ck["params"], exact_match=True, device=model.device)
        if ck.get("log_ent_coef") is not None:
            with torch.no_grad():
                model.log_ent_coef.copy_(ck["log_ent_coef"].to(model.log_ent_coef.device))  # in place: the optimizer holds this tensor
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise ExpertError(f"checkpoint {path} does not fit a {state['algo']} model: {e}") from e
    _load_buffer(model.replay_buffer, run / state["files"]["buffer"])
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    return ck


def load_run(run_dir: str | os.PathLike):
    """The SB3 model of a :func:`train_expert` run at its last checkpoint (weights, optimizers,
    replay buffer, counters), with a fresh env; read without unpickling code.

    Returns:
        ``(model, state)``: the TD3/SAC model and the run's ``state.json`` dict.

    Raises:
        ExpertError: not a run directory, or a checkpoint that does not fit.
    """
    import gymnasium as gym

    run = Path(run_dir)
    state = _read_state(run)
    model = _make_model(state["algo"], gym.make(state["env_id"]), state["seed"], state["hyperparams"])
    if state["num_timesteps"] > 0:
        _restore(model, run, state)
    return model, state


def _evaluate(model, env, episodes: int) -> list[float]:
    act = lambda obs: model.predict(obs, deterministic=True)[0]  # noqa: E731
    return [_rollout(env, act, EVAL_SEED + i)["return"] for i in range(episodes)]


def _write_curve(out: Path, curve: list[dict], title: str, plot: bool) -> None:
    cols = ["steps", "wall_s", "train_s", "steps_per_s", "mean_return", "std_return"]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols + ["returns"])
            for c in curve:
                w.writerow([c[k] for k in cols] + [" ".join(f"{r:.1f}" for r in c["returns"])])

    atomic_write(out / "curve.csv", write)
    if plot and curve:
        plot_curve(curve, out / "curve.png", title)


def plot_curve(curve: list[dict], path: Path, title: str) -> Path:
    """Deterministic evaluation return (mean ± std over the evaluation episodes) against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = np.array([c["steps"] for c in curve], dtype=float)
    m = np.array([c["mean_return"] for c in curve])
    sd = np.array([c["std_return"] for c in curve])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(s, m, marker=".")
    ax.fill_between(s, m - sd, m + sd, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return (deterministic)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def train_expert(env_name: str, out_dir: str | os.PathLike, total_steps: int, algo: str = "td3", seed: int = 0,
                 chunk_steps: int = 25_000, threads: int = 1, progress: bool = True, eval_episodes: int = 5,
                 overrides: dict | None = None, device: str = "cpu") -> dict:
    """Train (or resume training) an expert until ``total_steps`` environment steps.

    Trains in chunks of ``chunk_steps`` (``model.learn(chunk, reset_num_timesteps=False)``); after
    each chunk the policy is evaluated deterministically on ``eval_episodes`` episodes (seeds
    ``EVAL_SEED + i``) and the run is checkpointed (see the module docstring). When ``out_dir``
    already holds a run, it continues from its last checkpoint (same env, algorithm and seed;
    a larger ``total_steps`` extends it).

    Args:
        env_name: ``"hopper"`` or ``"walker2d"`` (or the Gymnasium id).
        out_dir: the run directory (created).
        total_steps: target number of environment steps.
        algo: ``"td3"`` or ``"sac"``.
        seed: SB3's seed (network init, exploration, env resets).
        chunk_steps: steps between checkpoints / evaluations.
        threads: torch CPU threads.
        progress: show a tqdm bar.
        eval_episodes: evaluation episodes per chunk.
        overrides: hyper-parameters replacing :data:`HYPERPARAMS` (``learning_starts``,
            ``buffer_size``, ``noise_std``); only for a new run (a resumed run keeps its own).
        device: torch device of the networks (``"cpu"``, ``"cuda"``); checkpoints are device-free.

    Returns:
        the run's state (``num_timesteps``, ``curve``, ``wall_s``, ...), as in ``state.json``.

    Raises:
        ExpertError: ``out_dir`` holds a run of another env, algorithm or seed, or a corrupt one.
    """
    import gymnasium as gym
    from tqdm import tqdm

    env_key, env_id = _env_id(env_name)
    algo = algo.lower()
    if algo not in HYPERPARAMS:
        raise ExpertError(f"unknown algorithm {algo!r}; choose one of {sorted(HYPERPARAMS)}")
    if total_steps <= 0 or chunk_steps <= 0:
        raise ExpertError("--steps and --chunk must be positive")
    out = Path(out_dir)
    state_path = out / "state.json"
    command = shlex.join(["ws", "expert", "train", "--env", env_key, "--algo", algo, "--steps", str(total_steps),
                          "--out", str(out), "--seed", str(seed), "--chunk", str(chunk_steps), "--threads",
                          str(threads)])
    torch.set_num_threads(max(1, int(threads)))

    state = None
    if state_path.exists():
        state = _read_state(out)
        for k, v in (("env", env_key), ("algo", algo), ("seed", int(seed))):
            if state[k] != v:
                raise ExpertError(f"run {out} was started with --{k} {state[k]}, not {v}; use its --{k} to "
                                  f"resume it or another --out for a new run")
    elif out.exists() and any(out.iterdir()):
        raise ExpertError(f"{out} exists and is not an expert run directory (no state.json); choose another --out")

    env = gym.make(env_id)
    eval_env = gym.make(env_id)
    if state is None:
        hp = {**HYPERPARAMS[algo], **(overrides or {})}
        state = {"format": RUN_FORMAT, "version": FORMAT_VERSION, "env": env_key, "env_id": env_id,
                 "algo": algo, "seed": int(seed), "hyperparams": hp, "num_timesteps": 0, "n_updates": 0,
                 "wall_s": 0.0, "train_s": 0.0, "curve": [], "best": None, "files": {}, "commands": [],
                 "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                 "machine": _machine(), "versions": _versions()}
    hp = state["hyperparams"]
    model = _make_model(algo, env, seed, hp, device)
    if state["num_timesteps"] > 0:  # resume
        ck = _restore(model, out, state)
        torch.set_rng_state(ck["torch_rng"])
        _set_rng_state(state["rng"])
        reseed = int(seed) + model.num_timesteps  # a fresh episode stream after the interruption
        model.env.seed(reseed)
        model.action_space.seed(reseed)
        log.info("resuming %s from %d steps (%d transitions in the replay buffer)", out, model.num_timesteps,
                 model.replay_buffer.size())
    state["commands"].append(command)

    from stable_baselines3.common.callbacks import BaseCallback

    bar = tqdm(total=int(total_steps), initial=min(model.num_timesteps, total_steps), unit="step",
               desc=f"{algo} {env_key}", disable=not progress, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 60.0)

    class _Bar(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    session_t0 = time.perf_counter()
    wall0 = float(state["wall_s"])
    try:
        while model.num_timesteps < total_steps:
            n = min(int(chunk_steps), int(total_steps) - model.num_timesteps)
            t0 = time.perf_counter()
            model.learn(n, reset_num_timesteps=False, callback=_Bar())
            train_s = time.perf_counter() - t0
            returns = _evaluate(model, eval_env, eval_episodes)
            steps = int(model.num_timesteps)
            state["train_s"] = float(state["train_s"]) + train_s
            point = {"steps": steps, "wall_s": round(wall0 + time.perf_counter() - session_t0, 1),
                     "train_s": round(state["train_s"], 1), "steps_per_s": round(n / train_s, 2),
                     "mean_return": round(float(np.mean(returns)), 2),
                     "std_return": round(float(np.std(returns)), 2), "returns": [round(r, 2) for r in returns]}
            bar.set_postfix(ret=f"{point['mean_return']:.0f}", sps=f"{point['steps_per_s']:.0f}")
            # checkpoint: data files first, state.json (the commit) last, then drop the old files
            params = torch.utils._pytree.tree_map(  # device-free: a CUDA run resumes on a CPU and back
                lambda v: v.detach().cpu() if torch.is_tensor(v) else v, model.get_parameters())
            files = {"params": f"params_{steps}.pt", "buffer": f"buffer_{steps}.npz",
                     "best_actor": state["files"].get("best_actor")}
            ent = getattr(model, "log_ent_coef", None)  # SAC's learned entropy coefficient (not a state dict)
            _torch_save({"params": params, "torch_rng": torch.get_rng_state(),
                         "log_ent_coef": None if ent is None else ent.detach().cpu().clone()}, out / files["params"])
            _save_buffer(model.replay_buffer, out / files["buffer"])
            if state["best"] is None or point["mean_return"] > state["best"]["mean_return"]:
                files["best_actor"] = f"best_actor_{steps}.pt"
                _torch_save({"steps": steps, "mean_return": point["mean_return"],
                             "actor": actor_state_dict(params["policy"], algo)}, out / files["best_actor"])
                state["best"] = {"steps": steps, "mean_return": point["mean_return"],
                                 "std_return": point["std_return"]}
            old = set(state["files"].values())
            state.update(num_timesteps=steps, n_updates=int(model._n_updates), files=files, rng=_rng_state(),
                         wall_s=point["wall_s"])
            state["curve"].append(point)
            _write_json(state_path, state)
            for name in old - set(files.values()):
                if name:
                    (out / name).unlink(missing_ok=True)
            _write_curve(out, state["curve"], f"{algo.upper()} {env_id} (seed {seed})", plot=True)
            log.info("%s %s: %d/%d steps, return %.1f ± %.1f, %.1f steps/s, checkpoint %s", algo, env_key, steps,
                     total_steps, point["mean_return"], point["std_return"], point["steps_per_s"], out)
    finally:
        bar.close()
        env.close()
        eval_env.close()
    if state["curve"]:
        _write_curve(out, state["curve"], f"{algo.upper()} {env_id} (seed {seed})", plot=True)
    state["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    _write_json(state_path, state)
    return state


# ----------------------------------------------------------------------------- export


def export_reference(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, n_episodes: int = 5,
                     seed: int = 20_000, which: str = "best", max_steps: int = MAX_STEPS,
                     command: str | None = None) -> list[Path]:
    """Write a trained expert in the shipped format (no SB3 needed to read it back).

    Rolls the deterministic policy (rebuilt as :class:`ExpertActor`) out for ``n_episodes``
    episodes (reset seeds ``seed + i``, up to ``max_steps`` steps) in the real MuJoCo env and writes
    to ``out_dir``:

    * ``actor.pt``: the actor's weights and description (:func:`load_expert`);
    * ``critic.pt``: its first Q-network (:func:`load_expert_critic`), when the exported actor is
      the run's last checkpoint (the only one whose critic is kept);
    * ``episodes.npz`` (float32): per episode ``i``: ``states_i`` ``(T+1, nq+nv)`` = ``[qpos, qvel]``
      read from MuJoCo at every step, ``actions_i`` ``(T, nu)``, ``rewards_i`` ``(T,)``; and
      ``returns``, ``lengths``, ``seeds``, ``action_mean``, ``action_var`` (over all steps);
    * ``reference.npz``: episode 0 as ``states`` / ``qpos`` / ``qvel`` / ``actions`` (``--reference``);
    * ``expert.json``: commands, seeds, steps trained, training wall time, machine, date, returns;
    * ``curve.csv`` / ``curve.png``: the run's learning curve.

    Args:
        run_dir: a :func:`train_expert` run directory.
        out_dir: where to write (default: the shipped location, :data:`SHIPPED` ``[env]``).
        which: ``"best"`` (the best evaluation during training) or ``"last"`` checkpoint.

    Raises:
        ExpertError: ``run_dir`` is not a run or has no checkpoint yet.
    """
    import gymnasium as gym

    run = Path(run_dir)
    state = _read_state(run)
    if not state.get("files"):
        raise ExpertError(f"run {run} has no checkpoint yet")
    algo, env_key = state["algo"], state["env"]
    if which == "best" and state["files"].get("best_actor"):
        ck = _torch_load(run / state["files"]["best_actor"], "expert actor")
        sd, steps = ck["actor"], int(ck["steps"])
    elif which in ("best", "last"):
        ck = _torch_load(run / state["files"]["params"], "expert training checkpoint")
        sd, steps = actor_state_dict(ck["params"]["policy"], algo), int(state["num_timesteps"])
    else:
        raise ExpertError(f"--which must be best or last, not {which!r}")
    out = SHIPPED[env_key] if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = gym.make(ENVIRONMENTS[env_key])
    info = {"run": str(run), "checkpoint": which, "checkpoint_steps": steps, "steps_trained": state["num_timesteps"]}
    payload = _actor_payload(env_key, algo, sd, env, info)
    actor = ExpertActor(payload["obs_dim"], payload["act_dim"], payload["hidden"], payload["action_low"],
                        payload["action_high"], payload)
    actor.load_weights(sd)
    actor.eval()
    try:
        eps = [_rollout(env, actor.act, seed + i, max_steps, record=True) for i in range(n_episodes)]
    finally:
        env.close()
    all_actions = np.concatenate([e["actions"] for e in eps])
    arrays = {"returns": np.array([e["return"] for e in eps]), "lengths": np.array([e["length"] for e in eps]),
              "seeds": np.array([e["seed"] for e in eps]),
              "action_mean": all_actions.astype(np.float64).mean(0).astype(np.float32),
              "action_var": all_actions.astype(np.float64).var(0).astype(np.float32)}
    for i, e in enumerate(eps):
        arrays[f"states_{i}"] = e["states"].astype(np.float32)
        arrays[f"actions_{i}"] = e["actions"].astype(np.float32)
        arrays[f"rewards_{i}"] = e["rewards"].astype(np.float32)
    nq = payload["observation"]["nq"]
    written = [out / "actor.pt", out / "episodes.npz", out / "reference.npz", out / "expert.json"]
    _torch_save(payload, written[0])
    params_path = run / state["files"]["params"]
    if int(state["num_timesteps"]) == steps and params_path.is_file():  # the critic of exactly this actor
        pol = _torch_load(params_path, "expert training checkpoint")["params"]["policy"]
        csd = critic_state_dict(pol)
        chidden = [int(csd[f"net.{2 * j}.weight"].shape[0]) for j in range(len(csd) // 2 - 1)]
        gamma = float(state["hyperparams"].get("gamma", 0.99))
        _torch_save({"format": EXPERT_FORMAT + "-critic", "version": FORMAT_VERSION, "env": env_key, "algo": algo,
                     "obs_dim": payload["obs_dim"], "act_dim": payload["act_dim"], "hidden": chidden,
                     "gamma": gamma, "state_dict": csd, "info": info}, out / "critic.pt")
        written.append(out / "critic.pt")
    _savez(written[1], compressed=True, **arrays)
    s0 = arrays["states_0"]
    _savez(written[2], compressed=True, states=s0, qpos=s0[:, :nq], qvel=s0[:, nq:], actions=arrays["actions_0"])
    returns = arrays["returns"]
    meta = {
        "env": env_key, "env_id": ENVIRONMENTS[env_key], "algo": algo, "library": "stable-baselines3",
        "hyperparams": state["hyperparams"], "train_seed": state["seed"], "train_commands": state["commands"],
        "export_command": command or shlex.join(["ws", "expert", "export", "--run", str(run), "--episodes",
                                                 str(n_episodes), "--seed", str(seed), "--which", which,
                                                 "--out", _shown(out)]),
        "steps_trained": state["num_timesteps"], "checkpoint": which, "checkpoint_steps": steps,
        "training_wall_s": state["wall_s"], "training_wall_h": round(state["wall_s"] / 3600, 2),
        "training_learn_s": state["train_s"], "machine": state.get("machine", _machine()),
        "versions": state.get("versions", _versions()), "trained": [state.get("started"), state.get("finished")],
        "exported": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "eval_seeds": [int(s) for s in arrays["seeds"]], "returns": [round(float(r), 2) for r in returns],
        "lengths": [int(n) for n in arrays["lengths"]],
        "return_mean": round(float(returns.mean()), 2),
        "return_std": round(float(returns.std(ddof=1)) if len(returns) > 1 else 0.0, 2),
        "return_std_note": "sample std over the evaluation seeds (each seed one unit)",
        "files": {"actor.pt": "torch.load(weights_only=True) dict; ws_mppi.expert.load_expert",
                  "episodes.npz": "states_i (T+1, nq+nv) = [qpos, qvel], actions_i, rewards_i; action_mean/var",
                  "reference.npz": "episode 0: states, qpos, qvel, actions (ws mppi run --reference)"},
    }
    _write_json(written[3], meta)
    if state.get("curve"):
        _write_curve(out, state["curve"], f"{algo.upper()} {ENVIRONMENTS[env_key]} (seed {state['seed']})", plot=True)
        written += [out / "curve.csv", out / "curve.png"]
    return written
