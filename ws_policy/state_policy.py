"""A state-based policy that reads the simulator's object poses: the privileged teacher.

The same flow matching over the action chunk as WorldScape Policy (:mod:`ws_policy.model`), with
x-prediction by default (the network outputs the clean chunk; ``action_prediction``), but no images:
an MLP reads the normalised joint positions and the objects' poses (cube and target positions minus
the band's middle and over 0.1 m, as :func:`ws_policy.model.object_targets` scales them; the cubes'
quaternions as they are), the noisy chunk and Fourier features of ``tau``.

It cannot run on a robot (there are no object poses there, and ``policy_executor`` refuses it). It is
(a) the teacher that labels every state an image policy visits in simulation (``ws hitl dagger
--teacher``; Chen et al. 2019, "Learning by cheating"), and (b) the yardstick for the action side: what
a policy that knows exactly where everything is reaches through the same executor over the whole band
(docs/policy.md). Trained with large batches (256 windows) in a minute or two on one core.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn

from .errors import PolicyError
from .fit import fit
from .model import N_OBJECT_TARGETS, OBJECT_CENTRE_M, OBJECT_SCALE_M, object_targets
from .normalizer import Normalizer

__all__ = ["StatePolicyConfig", "StatePolicy", "state_features", "train_state_policy", "N_STATE_FEATURES",
           "N_TARGET_FEATURES"]

#: the cube's centre resting on the table (its half size), m
CUBE_REST_Z_M = 0.02
#: a cube this far above its resting height is lifted (``noise_when="lifted"``), m
LIFTED_M = 0.015

#: features per observation (``inputs="poses"``): 8 joint positions, cube A (3 + 4), cube B (3 + 4), target (3)
N_STATE_FEATURES = 25
#: features per observation (``inputs="targets"``): 8 joint positions and :func:`ws_policy.model.object_targets`
N_TARGET_FEATURES = 8 + N_OBJECT_TARGETS


@dataclasses.dataclass(frozen=True)
class StatePolicyConfig:
    """Sizes of :class:`StatePolicy` (stored in its checkpoint)."""

    chunk: int = 8  # action chunk length L
    action_dim: int = 7
    hidden: int = 256
    layers: int = 3  # hidden layers of the MLP
    time_features: int = 8  # Fourier frequencies of tau
    action_prediction: str = "sample"  # the network's output: the clean chunk (x-prediction) or the velocity
    euler_steps: int = 10
    # what it reads besides the joints: "poses" (both cubes' positions and quaternions, the target's position) or
    # "targets" (the 8 values an image's object perception estimates: ws_policy.model.object_targets)
    inputs: str = "poses"
    mode: str = "state"  # what PolicyRunner and the checkpoint reader dispatch on

    def __post_init__(self):
        if self.mode != "state":
            raise ValueError(f"a StatePolicyConfig has mode 'state', got {self.mode!r}")
        if self.inputs not in ("poses", "targets"):
            raise ValueError(f"inputs must be poses or targets, got {self.inputs!r}")
        if self.action_prediction not in ("velocity", "sample"):
            raise ValueError(f"action_prediction must be velocity or sample, got {self.action_prediction!r}")
        for name in ("chunk", "hidden", "layers", "euler_steps", "time_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    # what the executor, the evaluation and the teacher read off a policy's config
    privileged: bool = dataclasses.field(default=True, init=False)
    wrist: bool = dataclasses.field(default=False, init=False)
    predicts_actions: bool = dataclasses.field(default=True, init=False)
    object_aux: float = dataclasses.field(default=0.0, init=False)
    indicator: bool = dataclasses.field(default=False, init=False)
    image_size: int = dataclasses.field(default=64, init=False)  # what an evaluation renders (videos only)


def state_features(qpos_normalised: np.ndarray, objects: np.ndarray, inputs: str = "poses") -> np.ndarray:
    """The policy's input from joint positions already normalised to [-1, 1] ``(..., 8)`` and the
    simulator's object state ``(..., 17)`` (cube A position and quaternion ``wxyz``, cube B's, the
    target position; metres). Returns ``(..., 25)`` float32 (``inputs="poses"``), or with
    ``inputs="targets"`` ``(..., 16)``: the joints and :func:`ws_policy.model.object_targets` (what an
    object perception estimates from images).

    Raises:
        ValueError: wrong last-axis sizes, values that are not finite, or an unknown ``inputs``.
    """
    q, o = np.asarray(qpos_normalised, dtype=np.float64), np.asarray(objects, dtype=np.float64)
    if q.shape[-1] != 8 or o.shape[-1] != 17:
        raise ValueError(f"joint positions (..., 8) and objects (..., 17) expected, got {q.shape} and {o.shape}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(o))):
        raise ValueError("joint positions and object poses must be finite")
    if inputs == "targets":
        return np.concatenate([q, object_targets(o)], axis=-1).astype(np.float32)
    if inputs != "poses":
        raise ValueError(f"inputs must be poses or targets, got {inputs!r}")
    pos = lambda p: (p - OBJECT_CENTRE_M) / OBJECT_SCALE_M  # noqa: E731
    return np.concatenate([q, pos(o[..., 0:3]), o[..., 3:7], pos(o[..., 7:10]), o[..., 10:14], pos(o[..., 14:17])],
                          axis=-1).astype(np.float32)


class StatePolicy(nn.Module):
    """The flow-matching MLP: ``(features (B, 25), x_tau (B, L, 7), tau (B,)) -> (B, L, 7)`` (``(B, 16)`` features
    with ``inputs="targets"``), the clean chunk (``action_prediction="sample"``) or the velocity, normalised to
    [-1, 1]."""

    def __init__(self, cfg: StatePolicyConfig):
        super().__init__()
        self.cfg = cfg
        n_in = N_STATE_FEATURES if cfg.inputs == "poses" else N_TARGET_FEATURES
        width = n_in + cfg.chunk * cfg.action_dim + 2 * cfg.time_features
        layers: list[nn.Module] = []
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU()]
            width = cfg.hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, cfg.chunk * cfg.action_dim))
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(cfg.time_features, dtype=torch.float32),
                             persistent=False)
        self.normalizer: Normalizer | None = None  # set by training or loading

    def forward(self, features: torch.Tensor, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        t = tau[:, None] * self.freqs
        h = torch.cat([features, x_tau.flatten(1), torch.sin(t), torch.cos(t)], dim=-1)
        return self.net(h).view(-1, self.cfg.chunk, self.cfg.action_dim)

    def velocity(self, features, x_tau, tau) -> torch.Tensor:
        """The flow velocity at ``x_tau``: the output, or ``(x^_1 - x_tau) / (1 - tau)`` with x-prediction."""
        out = self(features, x_tau, tau)
        return (out - x_tau) / (1 - tau).view(-1, 1, 1) if self.cfg.action_prediction == "sample" else out

    @torch.no_grad()
    def sample(self, features: torch.Tensor, generator: torch.Generator | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Euler integration from noise (``tau`` 0 -> 1): ``(B, L, 7)`` normalised chunks."""
        steps = steps or self.cfg.euler_steps
        b = features.shape[0]
        x = torch.randn((b, self.cfg.chunk, self.cfg.action_dim), generator=generator)
        for i in range(steps):
            x = x + self.velocity(features, x, torch.full((b,), i / steps)) / steps
        return x

    def loss(self, features: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss on a batch: the clean chunk's (x-prediction) or the velocity's squared error,
        over the valid steps of each chunk."""
        b = actions.shape[0]
        tau = torch.rand(b, generator=generator)
        x0 = torch.randn(actions.shape, generator=generator)
        t = tau.view(-1, 1, 1)
        out = self(features, t * actions + (1 - t) * x0, tau)
        target = actions if self.cfg.action_prediction == "sample" else actions - x0
        err = (out - target).square().mean(-1)
        v = valid.float()
        return (err * v).sum() / v.sum().clamp_min(1)


def _windows(episodes, chunk: int, norm, inputs: str = "poses") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every step of every episode: (features, normalised chunks, valid), the chunk padded with the last action."""
    feats, acts, valid = [], [], []
    for e in episodes:
        T = len(e.actions)
        idx = np.minimum(np.arange(T)[:, None] + np.arange(chunk), T - 1)
        feats.append(state_features(norm.state(e.qpos[:T]), e.objects[:T], inputs))
        acts.append(norm.actions(e.actions[idx]))
        valid.append(np.arange(T)[:, None] + np.arange(chunk) < T)
    return (torch.as_tensor(np.concatenate(feats)), torch.as_tensor(np.concatenate(acts), dtype=torch.float32),
            torch.as_tensor(np.concatenate(valid)))


def train_state_policy(cfg: StatePolicyConfig, episodes, steps: int, batch_size: int = 256, lr: float = 1e-3,
                       seed: int = 0, progress=None, successes_only: bool = True,
                       input_noise_m: float = 0.0, noise_when: str = "always",
                       noise_objects: str = "both") -> tuple[StatePolicy, dict]:
    """Train a :class:`StatePolicy` on demonstrations (their joint positions, object states and actions; the
    images are not read). AdamW, cosine decay of ``lr`` over ``steps``.

    ``input_noise_m`` (``inputs="targets"`` only): Gaussian noise of this standard deviation, metres, added
    to the cube's and the target's positions of every window drawn (fresh each draw), so that an actor
    that will read an object perception's estimates learns from inputs as uncertain as those, not from
    the simulator's exact positions (noise injection on the inputs, as DART injects it on the actions).
    ``noise_when``: ``"always"``, or ``"lifted"``: only in windows whose cube is at least
    :data:`LIFTED_M` above its resting height (the carry, where the estimate of a cube in the gripper is
    worst and the actor should place by the target). ``noise_objects``: perturb the cube's and the
    target's positions (``"both"``) or the cube's only (``"cube"``).

    Returns:
        (the model in eval mode, with its ``normalizer``; history ``{"loss": [...], "seconds": s}``).

    Raises:
        PolicyError: no episodes (left), an episode without object states, ``input_noise_m`` negative,
            not finite, or given for ``inputs="poses"``, or an unknown ``noise_when`` or ``noise_objects``.
    """
    if noise_when not in ("always", "lifted"):
        raise PolicyError(f"noise_when must be 'always' or 'lifted', got {noise_when!r}")
    if noise_objects not in ("both", "cube"):
        raise PolicyError(f"noise_objects must be 'both' or 'cube', got {noise_objects!r}")
    if not (np.isfinite(input_noise_m) and input_noise_m >= 0):
        raise PolicyError(f"input_noise_m must be a finite number >= 0, got {input_noise_m}")
    if input_noise_m and cfg.inputs != "targets":
        raise PolicyError("input_noise_m perturbs the estimated positions of inputs='targets'; "
                          f"this policy reads {cfg.inputs!r}")
    eps = [e for e in episodes if e.success or not successes_only]
    if not eps:
        raise PolicyError("no episodes to train the state policy on (all failed and only successes are used)")
    if any(e.objects is None or np.asarray(e.objects).shape[-1] != 17 for e in eps):
        raise PolicyError("the state policy needs each episode's object states ('objects', 17 values per step)")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise PolicyError(f"steps and batch_size must be >= 1 and lr > 0, got {steps}, {batch_size}, {lr}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    norm = Normalizer.from_episodes(eps)
    feats, acts, valid = _windows(eps, cfg.chunk, norm, cfg.inputs)
    model = StatePolicy(cfg)
    model.normalizer = norm

    sigma = float(input_noise_m) / OBJECT_SCALE_M  # object_targets' positions are in units of OBJECT_SCALE_M
    lifted = (CUBE_REST_Z_M + LIFTED_M - OBJECT_CENTRE_M[2]) / OBJECT_SCALE_M

    def batch_loss(step):
        i = torch.randint(0, len(feats), (batch_size,), generator=gen)
        f = feats[i]
        if sigma:  # features 8 .. 13: the cube's and the target's positions (object_targets)
            f = f.clone()
            noise = sigma * torch.randn(len(i), 6, generator=gen)
            if noise_when == "lifted":  # feature 10: the cube's height, (z - centre) / scale
                noise *= (f[:, 10:11] > lifted).float()
            if noise_objects == "cube":  # features 11 .. 13, the target's, kept exact
                noise[:, 3:] = 0.0
            f[:, 8:14] += noise
        return model.loss(f, acts[i], valid[i], gen)

    hist = fit(model, batch_loss, steps, lr, progress=progress)
    return model.eval(), hist
