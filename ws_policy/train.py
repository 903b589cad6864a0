"""Training, sampling and checkpoints of :class:`ws_policy.model.WorldScapePolicy`.

Losses as :mod:`ws_policy.model` describes (seed 004: ``L = L_diff + alpha L_3D``); the
optimiser is AdamW with linear warm-up and cosine decay. :class:`PolicyRunner` wraps a
trained network for inference: it validates and normalises one observation, runs the Euler
sampler and returns the action chunk in joint units.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ws_worldmodel.checkpoint import atomic_torch_save, safe_torch_load

from . import dit_policy  # noqa: F401  (registers video_model 'dit' with build_policy)
from .data import DemoDataset
from .model import PolicyConfig, PolicyInputError, Vocabulary, WorldScapePolicy, build_policy, object_targets
from .errors import PolicyError
from .normalizer import Normalizer

__all__ = ["Normalizer", "policy_loss", "sample", "train_policy", "save_policy", "load_policy", "PolicyRunner",
           "PolicyCheckpointError", "batch_from_windows", "TwoStagePolicy", "DEFAULT_POLICIES", "resolve_policy"]

#: policies shipped with the package, by task (``ws policy eval --checkpoint default``, ``policy_executor``'s
#: ``checkpoint: default``); how each was made is in docs/policy.md
DEFAULT_POLICIES = {"pick_place": Path(__file__).parent / "checkpoints" / "pick_place.pt"}


def resolve_policy(checkpoint: str | os.PathLike, task: str = "pick_place") -> str:
    """``"default"`` to the policy shipped for ``task``; any other value as it is.

    Raises:
        FileNotFoundError: no policy ships for ``task``.
    """
    if str(checkpoint) != "default":
        return str(checkpoint)
    path = DEFAULT_POLICIES.get(task)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"no default policy ships for {task!r} yet: train one with 'ws policy collect' and "
                                f"'ws policy train' (docs/policy.md) and give its path")
    return str(path)

FORMAT_TAG = "worldscape-policy"


class PolicyCheckpointError(PolicyError):
    """A missing, unreadable or unsafe policy checkpoint (the message names the path)."""


def _images(rgb: np.ndarray, depth: np.ndarray, max_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(..., H, W, 3)`` and metres ``(..., H, W)`` -> ``(..., 3, H, W)`` in [-1, 1] and ``(..., 1, H, W)`` m."""
    r = torch.as_tensor(np.asarray(rgb), dtype=torch.float32).movedim(-1, -3) / 127.5 - 1
    d = torch.as_tensor(np.minimum(np.asarray(depth, dtype=np.float32), max_depth)).unsqueeze(-3)
    return r, d


def _state(qpos: np.ndarray, objects: np.ndarray | None, norm: "Normalizer") -> torch.Tensor:
    """Normalised joint positions, and (privileged diagnostic) the object poses as they are (metres, unit
    quaternions: already of order one)."""
    x = norm.state(qpos)
    if objects is not None:
        x = np.concatenate([x, objects], axis=-1)
    return torch.as_tensor(x, dtype=torch.float32)


def batch_from_windows(windows: list[dict], cfg: PolicyConfig, norm: Normalizer, vocab: Vocabulary) -> dict:
    """Stack :meth:`DemoDataset.window` dicts into the network's normalised tensors (with
    ``cfg.object_aux``, also ``"objects"``: :func:`ws_policy.model.object_targets` of each window's
    object state).

    Raises:
        PolicyError: the policy reads the wrist camera or learns the object-position auxiliary and a
            window lacks the wrist frames or the object state.
    """
    if cfg.object_aux and any("objects" not in w for w in windows):
        raise PolicyError("the object-position auxiliary (object_aux) needs each window's object state ('objects')")
    rgb, depth = _images(np.stack([w["rgb"] for w in windows]), np.stack([w["depth"] for w in windows]), cfg.max_depth)
    if cfg.wrist:
        if any("wrist_rgb" not in w for w in windows):
            raise PolicyError("this policy reads the wrist camera; the demonstrations have none "
                              "(record them with 'ws policy collect --wrist')")
        wr, wd = _images(np.stack([w["wrist_rgb"] for w in windows]), np.stack([w["wrist_depth"] for w in windows]),
                         cfg.max_depth)
        rgb, depth = torch.cat([rgb, wr], dim=1), torch.cat([depth, wd], dim=1)
    frgb, fdep = _images(np.stack([w["future_rgb"] for w in windows]), np.stack([w["future_depth"] for w in windows]),
                         cfg.max_depth)
    b, f = frgb.shape[:2]
    s = cfg.future_size
    frgb = F.interpolate(frgb.flatten(0, 1), size=(s, s), mode="area").reshape(b, f, 3, s, s)
    fdep = F.interpolate(fdep.flatten(0, 1), size=(s, s), mode="area").reshape(b, f, 1, s, s) / cfg.max_depth * 2 - 1
    return {"rgb": rgb, "depth": depth,
            "state": _state(np.stack([w["qpos"] for w in windows]),
                            np.stack([w["objects"] for w in windows]) if cfg.privileged else None, norm),
            "words": torch.as_tensor(np.stack([vocab.encode(w["instruction"]) for w in windows])),
            "future_rgb": frgb, "future_depth": fdep,
            "actions": torch.as_tensor(norm.actions(np.stack([w["actions"] for w in windows])), dtype=torch.float32),
            "valid": torch.as_tensor(np.stack([w["valid"] for w in windows])),
            "indicator": torch.as_tensor(np.array([int(w.get("indicator", 1)) for w in windows]), dtype=torch.long),
            **({"objects": torch.as_tensor(object_targets(np.stack([w["objects"] for w in windows])))}
               if cfg.object_aux else {})}


def policy_loss(model: WorldScapePolicy, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """``L_diff + alpha L_3D`` (+ the IDM head's regression loss, + ``object_aux`` times the
    object-position auxiliary's mean squared error) on one batch; returns (loss, parts)."""
    loss, parts = _flow_loss(model, batch, generator)
    if model.cfg.object_aux:
        parts["objects"] = (parts.pop("_objects") - batch["objects"]).square().mean()
        loss = loss + model.cfg.object_aux * parts["objects"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def _flow_loss(model: WorldScapePolicy, batch: dict, generator: torch.Generator | None) -> tuple[torch.Tensor, dict]:
    """:func:`policy_loss` without the auxiliary: (loss, parts as tensors; ``"_objects"`` the head's output)."""
    cfg = model.cfg
    b, dev = batch["rgb"].shape[0], batch["rgb"].device  # the noise is drawn on the CPU, then moved
    ind = batch.get("indicator") if cfg.indicator else None
    if cfg.mode == "idm":  # a separate inverse-dynamics model: true future frames in, the chunk out
        out = model(batch["rgb"], batch["depth"], batch["state"], batch["words"], torch.ones(b, device=dev),
                    future_rgb=batch["future_rgb"], future_depth=batch["future_depth"], indicator=ind)
        valid = batch["valid"].float()
        loss = ((out["idm_actions"] - batch["actions"]).square().mean(-1) * valid).sum() / valid.sum().clamp_min(1)
        return loss, {"idm": loss, **({"_objects": out["objects"]} if "objects" in out else {})}
    tau = torch.rand(b, generator=generator).to(dev)
    targets = {}
    if cfg.predicts_video:
        targets["future_rgb"], targets["future_depth"] = batch["future_rgb"], batch["future_depth"]
    if cfg.predicts_actions and cfg.action_head == "flow":
        targets["actions"] = batch["actions"]
    noisy, velocity = {}, {}
    for k, x1 in targets.items():
        x0 = torch.randn(x1.shape, generator=generator).to(dev)
        t = tau.view(-1, *([1] * (x1.dim() - 1)))
        noisy[k], velocity[k] = t * x1 + (1 - t) * x0, x1 - x0
    out = model(batch["rgb"], batch["depth"], batch["state"], batch["words"], tau, **noisy, indicator=ind)
    parts = {}
    valid = batch["valid"].float()
    for k in targets:  # the clean chunk itself with action_prediction "sample" (x-prediction)
        sample_target = k == "actions" and cfg.action_prediction == "sample"
        err = (out[k] - (targets[k] if sample_target else velocity[k])).square()
        if k == "actions":
            parts["diff_actions"] = (err.mean(-1) * valid).sum() / valid.sum().clamp_min(1)
        else:
            parts[f"diff_{k}"] = err.mean()
    loss = sum(v * (cfg.action_weight if k == "diff_actions" else 1.0) for k, v in parts.items()) if parts \
        else torch.zeros((), device=dev)
    if cfg.predicts_video:
        t = tau.view(-1, 1, 1, 1, 1)
        est = {k: noisy[k] + (1 - t) * out[k] for k in ("future_rgb", "future_depth")}
        l3d = (est["future_depth"] - targets["future_depth"]).square().mean() + \
            cfg.lam * (est["future_rgb"] - targets["future_rgb"]).square().mean()
        parts["3d"] = l3d
        loss = loss + cfg.alpha * l3d
    if "idm_actions" in out:
        parts["idm"] = ((out["idm_actions"] - batch["actions"]).square().mean(-1) * valid).sum() / valid.sum().clamp_min(1)
        loss = loss + parts["idm"]
    if "objects" in out:
        parts["_objects"] = out["objects"]
    return loss, parts


class TwoStagePolicy(torch.nn.Module):
    """The two-stage baseline: a ``"world"`` model predicts future video and depth, then a
    separately trained ``"idm"`` model turns them into the action chunk."""

    def __init__(self, world: WorldScapePolicy, idm: WorldScapePolicy):
        super().__init__()
        if world.cfg.mode != "world" or idm.cfg.mode != "idm":
            raise ValueError("a two-stage policy needs a 'world' model and an 'idm' model")
        self.world, self.idm, self.cfg = world, idm, idm.cfg


@torch.no_grad()
def _check_guidance(cfg, guidance: float, indicator: int = 1) -> None:
    if guidance != 1.0 and not getattr(cfg, "indicator", False):
        raise ValueError(f"guidance {guidance} needs an advantage-conditioned policy (PolicyConfig.indicator)")
    if indicator not in (0, 1, 2):
        raise ValueError(f"indicator must be 0 (not an improvement), 1 (an improvement) or 2 (unknown), got {indicator!r}")
    if indicator != 1 and not getattr(cfg, "indicator", False):
        raise ValueError(f"indicator {indicator} needs an advantage-conditioned policy (PolicyConfig.indicator)")


def sample(model, rgb, depth, state, words, steps: int | None = None,
           generator: torch.Generator | None = None, guidance: float = 1.0, indicator: int = 1) -> dict:
    """Euler integration of the learned velocity from noise (``tau`` 0 -> 1) for every target
    the mode predicts; returns the clean targets (normalised), e.g. ``{"actions": (B, L, 7)}``.
    With ``action_prediction`` ``"sample"`` the network's clean chunk ``x^_1`` gives the actions'
    velocity ``(x^_1 - x_tau) / (1 - tau)``; the last step returns ``x^_1`` itself.
    A :class:`TwoStagePolicy` samples the future with its world model, then reads the chunk off
    it with its inverse-dynamics model.

    ``guidance`` ``w`` (an advantage-conditioned policy only, issue 8): the velocity is
    ``v(I unknown) + w (v(I = 1) - v(I unknown))``, classifier-free guidance toward the
    improvement indicator (Ho & Salimans 2022; pi*0.6's RECAP sharpens its advantage-conditioned
    policy the same way). ``w = 1`` is plain conditioning on ``I = 1``.

    ``indicator`` (an advantage-conditioned policy only): what to ask for, ``1`` an improvement
    (deployment), ``0`` not an improvement, ``2`` unknown (the unconditioned policy); a diagnostic
    of how much the policy reads its indicator. Guidance then pulls toward it from ``2``.

    Raises:
        ValueError: ``guidance`` other than 1, or ``indicator`` other than 1, for a policy without
            the indicator; an ``indicator`` outside 0, 1, 2.
    """
    dev = rgb.device  # the noise is drawn on the CPU (``generator``), then moved
    if isinstance(model, TwoStagePolicy):
        fut = sample(model.world, rgb, depth, state, words, steps, generator)
        out = model.idm(rgb, depth, state, words, torch.ones(rgb.shape[0], device=dev), **fut)
        return {**fut, "actions": out["idm_actions"]}
    cfg = model.cfg
    steps = steps or cfg.euler_steps
    b = rgb.shape[0]
    shapes = {}
    if cfg.predicts_video:
        f, s = cfg.frames, cfg.future_size
        shapes["future_rgb"], shapes["future_depth"] = (b, f, 3, s, s), (b, f, 1, s, s)
    if cfg.predicts_actions and cfg.action_head == "flow":
        shapes["actions"] = (b, cfg.chunk, cfg.action_dim)
    _check_guidance(cfg, guidance, indicator)
    x = {k: torch.randn(v, generator=generator).to(dev) for k, v in shapes.items()}
    asked = torch.full((b,), int(indicator), dtype=torch.long, device=dev) if getattr(cfg, "indicator", False) \
        else None
    out = {}
    for i in range(steps):
        tau = torch.full((b,), i / steps, device=dev)
        if guidance == 1.0:
            out = model(rgb, depth, state, words, tau, **x, indicator=asked)
        else:  # both indicators in one batch: the one asked for and 2 (unknown)
            ind = torch.cat([asked, torch.full((b,), 2, dtype=torch.long, device=dev)])
            two = model(*(torch.cat([t, t]) for t in (rgb, depth, state, words, tau)),
                        **{k: torch.cat([v, v]) for k, v in x.items()}, indicator=ind)
            out = {k: v[b:] + guidance * (v[:b] - v[b:]) for k, v in two.items()}
        v = dict(out)
        if "actions" in x and cfg.action_prediction == "sample":  # the velocity the clean estimate implies
            v["actions"] = (out["actions"] - x["actions"]) / (1 - tau).view(-1, 1, 1)
        x = {k: x[k] + v[k] / steps for k in x}
    if "idm_actions" in out or (cfg.predicts_actions and cfg.action_head == "idm"):
        out = model(rgb, depth, state, words, torch.ones(b, device=dev), **x)  # the IDM reads the denoised future
        x["actions"] = out["idm_actions"]
    return x


def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_policy(cfg: PolicyConfig, dataset: DemoDataset, steps: int, batch_size: int = 32, lr: float = 3e-4,
                 seed: int = 0, init: WorldScapePolicy | None = None, progress=None, log_every: int = 50,
                 callback=None, normalizer: Normalizer | None = None, videos: DemoDataset | None = None,
                 video_share: float = 0.25, device: str = "cpu", state_path: str | os.PathLike | None = None,
                 save_every: int = 500, state_extra: dict | None = None,
                 freeze_vision: bool = False) -> tuple[WorldScapePolicy, dict]:
    """Train a policy (or world model, by ``cfg.mode``) on demonstration windows.

    Resumable: with ``state_path``, the whole training state (weights, optimiser, the batch and
    noise generators, the step, the history and ``state_extra``) is written there atomically every
    ``save_every`` steps and at the end; a later call with the same ``state_path`` continues from
    it, and gives the same weights as an uninterrupted run. The caller removes the file once it
    has kept the model.

    Args:
        init: a trained network whose matching weights (same names and shapes, e.g. a
            ``mode="world"`` model's video and depth experts and shared layers) start this one.
        progress: optional tqdm-like bar (``update``, ``set_postfix``).
        callback: optional ``callback(step, model) -> bool``; True stops training (e.g. a
            success-rate target reached).
        normalizer: the action/state normalisation (default: the demonstrations' ranges,
            :meth:`Normalizer.from_episodes`); kept on the model as ``model.normalizer``.
        videos: episodes used as videos only (a dataset with ``use_actions=False``): each batch
            takes ``round(video_share * batch_size)`` windows from them, which train the future
            video and depth terms and not the action term. Seed 004 mixes action-free video into
            its policy's training data (its "Embodied Data Pyramid"); this is that, at our scale.
        device: where the model and batches live while training (``"cpu"``, ``"cuda"``); the
            ``callback`` sees the model there, and it is returned on the CPU.
        state_path: the training state's file (``None``: not resumable).
        save_every: steps between two writes of the training state.
        state_extra: plain data the caller keeps with the state (e.g. its evaluation curve):
            saved with it, and on resume updated in place from it (lists keep their identity).
        freeze_vision: keep the keypoint encoders' conv trunks and keypoint maps as ``init`` gave them
            (e.g. :meth:`ws_policy.perception.PosePolicy.vision_init`); no gradient flows through the trunks
            (their forward pass stays: a step was about 1.2x faster in docs/policy.md's runs).

    Raises:
        ValueError: ``videos`` for a mode that predicts no video, with actions in use, or a
            ``video_share`` outside (0, 1); ``save_every`` < 1; ``freeze_vision`` without ``init``, for a
            model without keypoint encoders, or with trunks ``init`` did not fill.
        PolicyError: a training state at ``state_path`` made with another configuration, number
            of steps, batch size, learning rate, seed or number of training windows, or not a
            training state.

    Returns:
        ``(model, history)`` with per-step losses and wall time.
    """
    n_video = 0
    if videos is not None:
        if not cfg.predicts_video:
            raise ValueError(f"videos train the video and depth prediction: mode {cfg.mode!r} predicts none")
        if videos.use_actions:
            raise ValueError("the videos dataset must be built with use_actions=False (its actions carry no loss)")
        if not 0.0 < video_share < 1.0:
            raise ValueError(f"video_share must be in (0, 1), got {video_share}")
        n_video = min(batch_size - 1, max(1, round(video_share * batch_size)))
    torch.manual_seed(seed)
    model = build_policy(cfg)
    loaded = 0
    if init is not None:
        own = model.state_dict()
        take = {k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(take, strict=False)
        loaded = len(take)
    if freeze_vision:
        encoders = [(name, getattr(model, name)) for name in ("keypoint_encoder", "wrist_encoder")
                    if hasattr(model, name)]
        if not encoders:
            raise ValueError("freeze_vision is for a policy with keypoint encoders (encoder 'keypoints')")
        taken = set(take) if init is not None else set()
        for name, enc in encoders:
            for part in ("trunk", "softmax"):
                prefix = f"{name}.{part}."
                missing = [prefix + k for k in getattr(enc, part).state_dict() if prefix + k not in taken]
                if missing:
                    raise ValueError(f"freeze_vision keeps {name}.{part} as init gave it, but init did not fill "
                                     f"{len(missing)} of its tensors (e.g. {missing[0]}): no init, or one with "
                                     f"another trunk width, blocks or number of keypoints")
                getattr(enc, part).requires_grad_(False)
    model.to(device)
    norm = normalizer or Normalizer.from_episodes(dataset.episodes)
    model.normalizer = norm  # travels with the checkpoint (save_policy)
    vocab = Vocabulary(list(cfg.vocab), cfg.max_words)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    history = {"loss": [], "parts": [], "loaded_tensors": loaded, "seconds": 0.0, "stopped_at": None}
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}")
    run = {"config": dataclasses.asdict(cfg), "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
           "seed": int(seed), "video_share": float(video_share) if n_video else None,
           "windows": len(dataset), "video_windows": len(videos) if n_video else 0,
           "freeze_vision": bool(freeze_vision)}
    start = 0
    if state_path is not None and Path(state_path).is_file():
        start, history = _load_train_state(state_path, run, model, opt, rng, gen, state_extra, device)
    seconds_before = history["seconds"]
    t0 = time.perf_counter()

    def save_state(done: int) -> None:
        history["seconds"] = seconds_before + time.perf_counter() - t0
        atomic_torch_save({"format": TRAIN_STATE_TAG, "run": run, "step": done, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "batch_rng": rng.bit_generator.state,
                           "noise_rng": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                           "extra": state_extra or {}}, state_path)

    if progress is not None and start:
        progress.update(start)
    model.train()
    for step in range(start if history["stopped_at"] is None else steps, steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, max(1, steps // 20))
        idx = rng.integers(len(dataset), size=batch_size - n_video)
        windows = [dataset.window(int(i)) for i in idx]
        if n_video:
            windows += [videos.window(int(i)) for i in rng.integers(len(videos), size=n_video)]
        batch = {k: v.to(device) for k, v in batch_from_windows(windows, cfg, norm, vocab).items()}
        if cfg.indicator:  # classifier-free style: some windows train the unconditioned policy
            drop = (torch.rand(batch_size, generator=gen) < cfg.indicator_dropout).to(device)
            batch["indicator"] = torch.where(drop, torch.full_like(batch["indicator"], 2), batch["indicator"])
        loss, parts = policy_loss(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history["loss"].append(float(loss.detach()))
        history["parts"].append(parts)
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if callback is not None and callback(step + 1, model):
            history["stopped_at"] = step + 1
            break
        if state_path is not None and (step + 1) % save_every == 0 and step + 1 < steps:
            save_state(step + 1)
    history["seconds"] = seconds_before + time.perf_counter() - t0
    if state_path is not None:
        save_state(history["stopped_at"] or steps)
    model.to("cpu").eval()
    return model, history


TRAIN_STATE_TAG = "worldscape-policy-train-state"


def _load_train_state(path, run: dict, model, opt, rng: np.random.Generator, gen: torch.Generator,
                      extra: dict | None, device: str) -> tuple[int, dict]:
    """Restore :func:`train_policy`'s state from ``path`` (read without running code); returns
    (the step to continue from, the history). Raises :class:`PolicyError` for a file of another
    run or not a training state."""
    st = safe_torch_load(path, map_location=device, error=PolicyCheckpointError, what="policy training state")
    if not isinstance(st, dict) or st.get("format") != TRAIN_STATE_TAG:
        raise PolicyError(f"{path} is not a policy training state")
    differ = sorted(k for k in run if k in st["run"] and st["run"][k] != run[k])  # (states of older runs lack some)
    if differ:
        detail = ", ".join(k if k == "config" else f"{k} {st['run'].get(k)!r} (now {run[k]!r})" for k in differ)
        if "config" in differ:
            detail += " (config fields: " + ", ".join(sorted(
                k for k in run["config"] if st["run"]["config"].get(k) != run["config"][k])) + ")"
        raise PolicyError(f"the training state {path} belongs to another run: {detail} differ; give the same "
                          f"settings to resume it, or remove it to start afresh")
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    rng.bit_generator.state = st["batch_rng"]
    gen.set_state(st["noise_rng"])
    torch.set_rng_state(st["torch_rng"])
    if extra is not None:
        for k, v in st["extra"].items():
            if isinstance(extra.get(k), list) and isinstance(v, list):
                extra[k][:] = v
            else:
                extra[k] = v
    return int(st["step"]), st["history"]


def _init_fields(cfg) -> dict:
    """A config dataclass's constructor fields as plain data."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


def save_policy(model: WorldScapePolicy, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write a self-contained checkpoint (config, normaliser, weights, ``extra``) atomically.

    Every value is stored as tensors and plain data (configs as dicts, numpy values as Python
    numbers and lists, paths as str), so :func:`load_policy` never runs code.

    Raises:
        TypeError: ``extra`` holds an object that is not plain data (its place is named).
    """
    if getattr(model.cfg, "mode", None) == "state":  # a StatePolicy (ws_policy.state_policy)
        payload = {"format": FORMAT_TAG, "kind": "state", "config": _init_fields(model.cfg),
                   "state_dict": model.state_dict()}
    elif getattr(model.cfg, "mode", None) == "pose":  # a PosePolicy (ws_policy.perception)
        perception = {**dataclasses.asdict(model.perception.cfg), "vocab": list(model.perception.cfg.vocab)}
        payload = {"format": FORMAT_TAG, "kind": "pose", "config": _init_fields(model.actor.cfg),
                   "state_dict": model.actor.state_dict(), "perception_config": perception,
                   "perception_state_dict": model.perception.state_dict()}
        extra = {**(extra or {}), "object_memory": int(getattr(model, "object_memory", 0))}
    elif isinstance(model, TwoStagePolicy):
        payload = {"format": FORMAT_TAG, "kind": "two_stage", "config": dataclasses.asdict(model.world.cfg),
                   "state_dict": model.world.state_dict(), "idm_config": dataclasses.asdict(model.idm.cfg),
                   "idm_state_dict": model.idm.state_dict()}
    else:
        payload = {"format": FORMAT_TAG, "kind": "single", "config": dataclasses.asdict(model.cfg),
                   "state_dict": model.state_dict()}
    net = model.idm if isinstance(model, TwoStagePolicy) else model
    norm = getattr(net, "normalizer", None) or Normalizer.for_piper()
    payload.update(normalizer=norm.to_dict(), extra=extra or {})
    return atomic_torch_save(payload, path)


def load_policy(path: str | os.PathLike) -> tuple[WorldScapePolicy, dict]:
    """Load a checkpoint written by :func:`save_policy`; returns (model in eval mode, payload).

    The file is read with ``torch.load(..., weights_only=True)``: tensors and plain data only.

    Raises:
        PolicyCheckpointError: missing, unreadable, not a safe checkpoint (its unpickling would
            run code; refused before anything runs) or not a policy checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyCheckpointError(f"no policy checkpoint at {path}")
    payload = safe_torch_load(path, error=PolicyCheckpointError, what="policy checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise PolicyCheckpointError(f"{path} is not a WorldScape policy checkpoint")
    def build(cfg: dict, state: dict) -> WorldScapePolicy:
        cfg = {**cfg, "vocab": tuple(cfg.get("vocab", ()))}
        net = build_policy(PolicyConfig(**cfg))
        net.load_state_dict(state)
        return net.eval()

    if payload.get("kind") == "state":
        from .state_policy import StatePolicy, StatePolicyConfig

        try:
            net = StatePolicy(StatePolicyConfig(**payload["config"]))
            net.load_state_dict(payload["state_dict"])
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            raise PolicyCheckpointError(f"{path}: not a readable state policy ({e})") from e
        net.normalizer = Normalizer.from_dict(payload["normalizer"])
        return net.eval(), payload
    if payload.get("kind") == "pose":
        from .perception import ObjectPerception, PerceptionConfig, PosePolicy
        from .state_policy import StatePolicy, StatePolicyConfig

        try:
            actor = StatePolicy(StatePolicyConfig(**payload["config"]))
            actor.load_state_dict(payload["state_dict"])
            pcfg = {**payload["perception_config"], "vocab": tuple(payload["perception_config"]["vocab"])}
            perception = ObjectPerception(PerceptionConfig(**pcfg))
            perception.load_state_dict(payload["perception_state_dict"])
            net = PosePolicy(perception, actor, object_memory=(payload.get("extra") or {}).get("object_memory", 0))
        except (TypeError, ValueError, RuntimeError, KeyError) as e:
            raise PolicyCheckpointError(f"{path}: not a readable pose policy ({e})") from e
        net.normalizer = Normalizer.from_dict(payload["normalizer"])
        return net.eval(), payload
    model = build(payload["config"], payload["state_dict"])
    if payload.get("kind") == "two_stage":
        model = TwoStagePolicy(model, build(payload["idm_config"], payload["idm_state_dict"])).eval()
    norm = Normalizer.from_dict(payload["normalizer"]) if "normalizer" in payload else Normalizer.for_piper()
    model.normalizer = norm
    if isinstance(model, TwoStagePolicy):
        model.idm.normalizer = model.world.normalizer = norm
    return model, payload


class PolicyRunner:
    """One observation in, one action chunk out (joint units), with input checks.

    Args:
        model: a trained network that predicts actions.
        steps: Euler steps (default: the config's).
        seed: the sampler's noise seed.
        guidance: indicator guidance weight of an advantage-conditioned policy (:func:`sample`).
        indicator: the improvement indicator asked of an advantage-conditioned policy: 1 (the
            default, deployment), 0 or 2 (unknown) as diagnostics (:func:`sample`).
        object_memory: a pose policy's actor reads what :class:`ws_policy.perception.ObjectMemory` keeps
            of the estimates, averaged over this many first calls of the episode (0: the live estimate
            at every call; ``None``, the default: the policy's own ``object_memory``, which its checkpoint
            carries, else 0). Call :meth:`reset` at each new episode; a new instruction resets it too.

    Raises:
        ValueError: the model does not predict actions (a ``mode="world"`` network); guidance or
            an indicator that the model cannot take; ``object_memory`` < 0, or > 0 for a policy
            that is not a pose policy.
    """

    def __init__(self, model, steps: int | None = None, seed: int = 0, guidance: float = 1.0, indicator: int = 1,
                 object_memory: int | None = None):
        if not model.cfg.predicts_actions:
            raise ValueError("this network predicts no actions (mode 'world'); fine-tune it into a policy first")
        if model.cfg.mode == "idm" and not isinstance(model, TwoStagePolicy):
            raise ValueError("an inverse-dynamics model needs a world model in front of it (a TwoStagePolicy)")
        self.model, self.cfg = model, model.cfg
        self.steps = steps or model.cfg.euler_steps
        self.norm = getattr(model, "normalizer", None) or Normalizer.for_piper()
        self._limits = Normalizer.for_piper()  # the actuators' ranges: the last word on every action
        self.state_only = model.cfg.mode == "state"  # a StatePolicy: joints and object poses, no images
        self.pose = model.cfg.mode == "pose"  # a PosePolicy: object perception, then a state policy
        self.vocab = None if self.state_only else Vocabulary(list(model.cfg.vocab), model.cfg.max_words)
        self.gen = torch.Generator().manual_seed(seed)
        _check_guidance(model.cfg, guidance, indicator)  # at construction, not at the first observation
        self.guidance, self.indicator = float(guidance), int(indicator)
        if object_memory is None:
            object_memory = int(getattr(model, "object_memory", 0)) if self.pose else 0
        if int(object_memory) < 0 or (int(object_memory) > 0 and not self.pose):
            raise ValueError(f"object_memory must be >= 0, and > 0 only for a pose policy (this one is "
                             f"{model.cfg.mode!r}), got {object_memory}")
        self.memory = None
        if int(object_memory) > 0:
            from .perception import ObjectMemory

            self.memory = ObjectMemory(frames=int(object_memory))
        self._memory_instruction = None

    def reset(self) -> None:
        """A new episode: forget what the object memory kept (nothing else carries over between calls)."""
        if self.memory is not None:
            self.memory.reset()

    def check(self, obs: dict) -> None:
        """Raise :class:`PolicyInputError` naming what is wrong with an observation."""
        if self.state_only:
            self._state_features(obs)
            return
        s = self.cfg.image_size
        for rk, dk in self._cameras():
            rgb, depth = obs.get(rk), obs.get(dk)
            if rgb is None or depth is None:
                raise PolicyInputError(f"observation needs '{rk}' and '{dk}' images, got keys {sorted(obs)}")
            rgb, depth = np.asarray(rgb), np.asarray(depth)
            if rgb.shape != (s, s, 3) or rgb.dtype != np.uint8:
                raise PolicyInputError(f"{rk} must be a ({s}, {s}, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
            if depth.shape != (s, s):
                raise PolicyInputError(f"{dk} must be a ({s}, {s}) image in metres, got {depth.shape}")
            if not np.all(np.isfinite(depth)) or depth.min() < 0:
                raise PolicyInputError(f"{dk} holds NaN, infinite or negative values")
        q = np.asarray(obs.get("qpos", []), dtype=np.float64)
        if q.shape != (self.cfg.state_dim,) or not np.all(np.isfinite(q)):
            raise PolicyInputError(f"qpos must be {self.cfg.state_dim} finite joint positions, got {q.shape}")
        self.vocab.encode(obs.get("instruction", ""))

    def _cameras(self) -> list[tuple[str, str]]:
        """The observation's image keys this policy reads: the scene camera, and the wrist camera with ``wrist``."""
        return [("rgb", "depth")] + ([("wrist_rgb", "wrist_depth")] if getattr(self.cfg, "wrist", False) else [])

    @torch.no_grad()
    def __call__(self, obs: dict) -> np.ndarray:
        """``(chunk, 7)`` joint targets (rad, finger m) for the steps from now on."""
        if self.state_only:
            chunk = self.model.sample(torch.as_tensor(self._state_features(obs)[None]), self.gen, self.steps)[0]
        elif self.pose:
            if self.memory is not None and obs.get("instruction") != self._memory_instruction:
                self.memory.reset()  # a new task: what was kept belonged to the old one
                self._memory_instruction = obs.get("instruction")
            chunk = self.model.sample(*self._tensors(obs), self.gen, self.steps, memory=self.memory)[0]
        else:
            rgb, depth, state, words = self._tensors(obs)
            chunk = sample(self.model, rgb, depth, state, words, self.steps, self.gen, self.guidance,
                           self.indicator)["actions"][0]
        return np.clip(self.norm.actions_back(chunk.cpu().numpy()), self._limits.action_low,
                       self._limits.action_high)

    def _state_features(self, obs: dict) -> np.ndarray:
        """A state policy's input (:func:`ws_policy.state_policy.state_features`) from ``qpos`` and ``objects``."""
        from .state_policy import state_features

        qpos, objects = np.asarray(obs.get("qpos", []), dtype=np.float64), np.asarray(obs.get("objects", []),
                                                                                      dtype=np.float64)
        if qpos.shape != (8,) or objects.shape != (17,):
            raise PolicyInputError(f"a state policy needs 'qpos' (8,) and the simulator's 'objects' (17,), got "
                                   f"{qpos.shape} and {objects.shape}")
        if not (np.all(np.isfinite(qpos)) and np.all(np.isfinite(objects))):
            raise PolicyInputError("qpos and objects must be finite")
        return state_features(self.norm.state(qpos), objects, self.cfg.inputs)

    @torch.no_grad()
    def object_positions(self, obs: dict) -> dict:
        """Where the object-position auxiliary head (``PolicyConfig.object_aux``) places the task's cube
        and the target from this observation: ``{"cube": (3,), "target": (3,)}`` in metres (a
        diagnostic of what the policy's context has learnt; no action depends on it).

        Raises:
            ValueError: the policy was trained without the auxiliary.
            PolicyInputError: a malformed observation.
        """
        from .model import object_positions

        net = self.model.idm if isinstance(self.model, TwoStagePolicy) else self.model
        if not getattr(net.cfg, "object_aux", 0):
            raise ValueError("this policy was trained without the object-position auxiliary (--object-aux)")
        rgb, depth, state, words = self._tensors(obs)
        if self.pose:
            cube, target = object_positions(net.perception(rgb, depth, state, words)[0].cpu().numpy())
            return {"cube": cube, "target": target}
        c, dev = net.cfg, rgb.device
        f, s = c.frames, c.future_size
        out = net(rgb, depth, state, words, torch.zeros(1, device=dev),
                  future_rgb=torch.zeros(1, f, 3, s, s, device=dev), future_depth=torch.zeros(1, f, 1, s, s, device=dev),
                  actions=torch.zeros(1, c.chunk, c.action_dim, device=dev))
        cube, target = object_positions(out["objects"][0].cpu().numpy())
        return {"cube": cube, "target": target}

    def _tensors(self, obs: dict):
        """The checked observation as the network's batch-of-one tensors ``(rgb, depth, state, words)``."""
        self.check(obs)
        ims = [_images(obs[rk][None], obs[dk][None], self.cfg.max_depth) for rk, dk in self._cameras()]
        rgb, depth = torch.cat([r for r, _ in ims], dim=1), torch.cat([d for _, d in ims], dim=1)
        objects = None
        if self.cfg.privileged:
            objects = np.asarray(obs.get("objects", []), dtype=np.float64)
            if objects.shape != (17,) or not np.all(np.isfinite(objects)):
                raise PolicyInputError(f"a privileged policy needs the 17 object values, got {objects.shape}")
            objects = objects[None]
        state = _state(np.asarray(obs["qpos"])[None], objects, self.norm)
        words = torch.as_tensor(self.vocab.encode(obs["instruction"])[None])
        dev = next(self.model.parameters()).device  # the CPU, or where a model being trained is
        return tuple(t.to(dev) for t in (rgb, depth, state, words))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit("use 'ws policy train'")
