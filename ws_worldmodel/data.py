"""From trajectory datasets to WestWorld batches: windows, min-max normalisation, padding.

A :class:`SystemData` is one system's dataset with what the model needs of that system:
the per-channel ranges (channel ``min``/``max``, the training split's data ranges written
by ``ws collect``) and the structural index of every channel's body. :func:`collate` pads
windows of several systems to the batch's largest channel counts and builds the masks, so
a batch may mix systems of any size.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import mujoco
import numpy as np
import torch

from ws_sim.channels import Channel
from ws_sim.dataset import TrajectoryDataset

from .structure import channel_structure, structure_from_model
from .westworld import TrajectoryBatch

__all__ = ["SystemData", "collate", "normalise", "denormalise"]


def _ranges(channels: Sequence[Channel]) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([c.min for c in channels], dtype=np.float64)
    hi = np.array([c.max for c in channels], dtype=np.float64)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        bad = [c.name for c, a, b in zip(channels, lo, hi) if not (np.isfinite(a) and np.isfinite(b))]
        raise ValueError(f"channels {bad} have no finite range; take ranges from data (ws_sim.channels.data_ranges)")
    return lo, np.where(hi - lo > 1e-8, hi, lo + 1.0)


def normalise(x: np.ndarray, channels: Sequence[Channel]) -> np.ndarray:
    """Channel-wise min-max normalisation to [0, 1] (values outside the range go outside)."""
    lo, hi = _ranges(channels)
    return (np.asarray(x) - lo) / (hi - lo)


def denormalise(x: np.ndarray | torch.Tensor, channels: Sequence[Channel]):
    """Inverse of :func:`normalise` (NumPy or torch)."""
    lo, hi = _ranges(channels)
    if isinstance(x, torch.Tensor):
        return x * torch.as_tensor(hi - lo, dtype=x.dtype) + torch.as_tensor(lo, dtype=x.dtype)
    return x * (hi - lo) + lo


@dataclasses.dataclass
class SystemData:
    """One system's windows of ``length`` steps.

    Attributes:
        name: system name.
        states: ``(N, T, Cs)`` normalised states; ``actions``: ``(N, T, Ca)``.
        state_struct, action_struct: ``(Cs, 4)``, ``(Ca, 4)`` structural indices (object + 1).
        state_channels, action_channels: the channel metadata (ranges used to normalise).
    """

    name: str
    states: np.ndarray
    actions: np.ndarray
    state_struct: np.ndarray
    action_struct: np.ndarray
    state_channels: list[Channel]
    action_channels: list[Channel]

    @classmethod
    def from_dataset(cls, ds: TrajectoryDataset, model: mujoco.MjModel, length: int, stride: int = 1,
                     ranges_from: TrajectoryDataset | None = None) -> "SystemData":
        """Cut every segment of ``ds`` into windows of ``length`` consecutive states.

        Args:
            ds: the dataset.
            model: the system's ``MjModel`` (for the kinematic structure).
            length: window length ``T`` in steps (states ``s_0..s_{T-1}``, actions alongside).
            stride: step between window starts.
            ranges_from: take the normalisation ranges from this (training) split.

        Raises:
            ValueError: no segment is long enough.
        """
        sc = list((ranges_from or ds).state_channels)
        ac = list((ranges_from or ds).action_channels)
        structure = structure_from_model(model)
        s_idx = channel_structure(structure, sc)
        a_idx = channel_structure(structure, ac)
        s_idx[:, 0] += 1
        a_idx[:, 0] += 1
        states, actions = [], []
        for seg in ds.segments():
            obs, act = seg["observations"], seg["actions"]
            n = len(act)  # states s_0..s_n, actions a_0..a_{n-1}
            for start in range(0, n - length + 2, stride):  # the window's last state is s_{start+length-1}
                states.append(obs[start:start + length])
                a = act[start:start + length]
                if len(a) < length:  # the last state has no action: repeat the final one (never read)
                    a = np.concatenate([a, a[-1:]])
                actions.append(a)
        if not states:
            raise ValueError(f"no segment of dataset {ds.env!r} has {length} states")
        return cls(ds.env, normalise(np.stack(states), sc).astype(np.float32),
                   normalise(np.stack(actions), ac).astype(np.float32), s_idx, a_idx, sc, ac)

    def __len__(self) -> int:
        return len(self.states)


def collate(items: Sequence[tuple[SystemData, int]], history: int) -> TrajectoryBatch:
    """Build a padded batch from ``(system, window index)`` pairs (systems may differ in size)."""
    t = items[0][0].states.shape[1]
    cs = max(s.states.shape[2] for s, _ in items)
    ca = max(s.actions.shape[2] for s, _ in items)
    b = len(items)
    states = torch.zeros(b, t, cs)
    actions = torch.zeros(b, t, ca)
    smask = torch.zeros(b, cs, dtype=torch.bool)
    amask = torch.zeros(b, ca, dtype=torch.bool)
    sidx = torch.zeros(b, cs, 4, dtype=torch.long)
    aidx = torch.zeros(b, ca, 4, dtype=torch.long)
    for k, (sysd, i) in enumerate(items):
        if sysd.states.shape[1] != t:
            raise ValueError("all windows of a batch must have the same length")
        ns, na = sysd.states.shape[2], sysd.actions.shape[2]
        states[k, :, :ns] = torch.from_numpy(sysd.states[i])
        actions[k, :, :na] = torch.from_numpy(sysd.actions[i])
        smask[k, :ns] = True
        amask[k, :na] = True
        sidx[k, :ns] = torch.from_numpy(sysd.state_struct)
        aidx[k, :na] = torch.from_numpy(sysd.action_struct)
    return TrajectoryBatch(states, actions, smask, amask, sidx, aidx, history)
