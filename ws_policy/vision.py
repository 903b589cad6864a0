"""Vision that localises: a GroupNorm conv trunk with spatial-softmax keypoints, random crops, and
depth as geometry, for :class:`ws_policy.model.WorldScapePolicy` (``encoder="keypoints"``).

What the image policies that succeed over a whole bin use (read, not copied; the code is ours):
robomimic's image BC-RNN and Diffusion Policy (Chi et al. 2023) put a ResNet-18 trunk trained from
scratch with GroupNorm instead of BatchNorm (statistics of small, correlated robot batches are poor)
under a spatial-softmax layer (Levine et al. 2016, "End-to-end training of deep visuomotor
policies"): each of K feature channels becomes a probability map over the image, and its expected
pixel position is a *keypoint*. They train on random crops (76 of 84 px) and evaluate on the centre
crop. Here the trunk is a few GroupNorm residual blocks (2 CPU cores must run 100k+ steps), and:

* **Keypoint tokens.** Each of the ``keypoints`` maps gives one token: its expected image position
  ``(x, y)`` in [-1, 1] of the full frame and the feature vector pooled under its map.
* **Depth as geometry.** The depth frame is pooled under the same map, so each keypoint also has an
  expected depth; the pinhole intrinsics turn ``(x, y, depth)`` into a 3D point in the camera frame,
  whose Fourier features make the keypoint's depth token (the Depth Positional Embedding of seed 004,
  per keypoint instead of per patch).
* **Crops that keep the geometry.** A random crop shifts the image; the keypoints' positions are
  mapped back to the full frame with the crop's offset before the rays are cast, so the 3D points are
  exact for every crop and the trunk learns features that do not depend on where the crop fell.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SpatialSoftmax", "GroupNormTrunk", "KeypointEncoder", "random_crop", "centre_crop", "fourier_features"]


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 channels a group where possible (Wu & He 2018 use 32 groups of wide layers)."""
    return max(1, channels // 8)


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.GroupNorm(_groups(c), c), nn.GELU(),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.GroupNorm(_groups(c), c))

    def forward(self, x):
        return F.gelu(x + self.body(x))


class GroupNormTrunk(nn.Module):
    """``(B, c_in, S, S) -> (B, width * 2, S/4, S/4)``: a stride-2 stem, a residual block, a stride-2
    widening convolution and ``blocks - 1`` more residual blocks, GroupNorm throughout.

    Args:
        c_in: input channels (3 for RGB, 1 for depth).
        width: channels after the stem (doubled after the second stride).
        blocks: residual blocks at the quarter resolution (at least 1).
    """

    def __init__(self, c_in: int, width: int = 16, blocks: int = 2):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ValueError(f"the trunk needs width >= 1 and blocks >= 1, got {width}, {blocks}")
        w2 = 2 * width
        layers = [nn.Conv2d(c_in, width, 3, 2, 1, bias=False), nn.GroupNorm(_groups(width), width), nn.GELU(),
                  _ResBlock(width),
                  nn.Conv2d(width, w2, 3, 2, 1, bias=False), nn.GroupNorm(_groups(w2), w2), nn.GELU()]
        layers += [_ResBlock(w2) for _ in range(blocks)]
        self.net = nn.Sequential(*layers)
        self.out_channels = w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SpatialSoftmax(nn.Module):
    """Feature maps to keypoints (Levine et al. 2016).

    ``forward(features (B, C, h, w)) -> (positions (B, K, 2), attention (B, K, h, w))``: a 1x1
    convolution makes K maps, a softmax over each map's pixels (with a learned temperature) makes a
    probability map, and a keypoint's position is its expected pixel centre ``(x, y)``, in [-1, 1]
    of the feature map (x to the right, y down).
    """

    def __init__(self, channels: int, keypoints: int):
        super().__init__()
        if keypoints < 1:
            raise ValueError(f"keypoints must be >= 1, got {keypoints}")
        self.maps = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.keypoints = keypoints

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = features.shape
        logits = self.maps(features).flatten(2) / self.log_temperature.exp()
        att = logits.softmax(-1)  # (B, K, h w)
        ys = (torch.arange(h, device=features.device, dtype=features.dtype) + 0.5) / h * 2 - 1
        xs = (torch.arange(w, device=features.device, dtype=features.dtype) + 0.5) / w * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(h * w, 2)  # (h w, 2): x, y
        return att @ grid, att.reshape(b, self.keypoints, h, w)


def random_crop(rgb: torch.Tensor, depth: torch.Tensor, size: int, generator: torch.Generator | None = None):
    """The same random ``size`` px square of each sample's RGB ``(B, 3, S, S)`` and depth ``(B, 1, S, S)``.

    Returns:
        ``(rgb (B, 3, size, size), depth (B, 1, size, size), offset (B, 2))``: ``offset`` is each crop's
        top-left corner ``(x, y)`` in pixels of the full frame.

    Raises:
        ValueError: ``size`` larger than the frame.
    """
    b, _, s, _ = rgb.shape
    if not 0 < size <= s:
        raise ValueError(f"crop size {size} does not fit a {s} px frame")
    off = torch.randint(0, s - size + 1, (b, 2), generator=generator).to(rgb.device)
    rows = off[:, 1, None] + torch.arange(size, device=rgb.device)  # (B, size)
    cols = off[:, 0, None] + torch.arange(size, device=rgb.device)
    idx = torch.arange(b, device=rgb.device)[:, None, None]

    def take(x):
        return x.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    return take(rgb), take(depth), off.to(rgb.dtype)


def centre_crop(rgb: torch.Tensor, depth: torch.Tensor, size: int):
    """:func:`random_crop`'s evaluation counterpart: the centred ``size`` px square (same returns)."""
    b, _, s, _ = rgb.shape
    if not 0 < size <= s:
        raise ValueError(f"crop size {size} does not fit a {s} px frame")
    o = (s - size) // 2
    off = torch.full((b, 2), float(o), device=rgb.device, dtype=rgb.dtype)
    return rgb[..., o:o + size, o:o + size], depth[..., o:o + size, o:o + size], off


def fourier_features(x: torch.Tensor, bands: int) -> torch.Tensor:
    """``(..., c) -> (..., c (1 + 2 bands))``: ``x`` with ``sin`` and ``cos`` of ``2^k pi x``, ``k < bands``."""
    freqs = 2.0 ** torch.arange(bands, dtype=x.dtype, device=x.device) * math.pi
    ang = x[..., None] * freqs
    return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


class KeypointEncoder(nn.Module):
    """One camera's RGB-D frame to keypoint tokens (see the module docstring).

    Args:
        d: token width.
        image_size: the full frame's side, px (the intrinsics are the full frame's).
        fov_y_deg: the camera's vertical field of view, degrees.
        keypoints: K, tokens per modality.
        width, blocks: :class:`GroupNormTrunk` sizes.
        max_depth: metres; depth is clipped to it and scaled by it.

    ``forward(rgb (B, 3, s, s) in [-1, 1], depth (B, 1, s, s) metres, offset (B, 2) px)`` returns
    ``(video tokens (B, K, d), depth tokens (B, K, d), points (B, K, 3))``: ``s`` is the crop's side and
    ``offset`` its top-left corner in the full frame; ``points`` are the keypoints' camera-frame 3D
    positions in metres (x right, y up, z along the optical axis).
    """

    def __init__(self, d: int, image_size: int, fov_y_deg: float, keypoints: int = 16, width: int = 16,
                 blocks: int = 2, max_depth: float = 2.0):
        super().__init__()
        self.image_size, self.max_depth = image_size, max_depth
        self.focal = 0.5 * image_size / math.tan(math.radians(fov_y_deg) / 2)  # px
        self.trunk = GroupNormTrunk(4, width, blocks)  # RGB and normalised depth together
        c = self.trunk.out_channels
        self.softmax = SpatialSoftmax(c, keypoints)
        self.video = nn.Sequential(nn.Linear(c + 2 * 2 * 4 + 2, d), nn.GELU(), nn.Linear(d, d))
        self.depth = nn.Sequential(nn.Linear(3 + 3 * 2 * 6 + 1, d), nn.GELU(), nn.Linear(d, d))
        self.identity = nn.Parameter(torch.randn(keypoints, d) * 0.02)

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, offset: torch.Tensor):
        s = rgb.shape[-1]
        depth = depth.clamp(0.0, self.max_depth)
        feat = self.trunk(torch.cat([rgb, depth / self.max_depth * 2 - 1], dim=1))
        pos, att = self.softmax(feat)  # (B, K, 2) in [-1, 1] of the crop
        pooled = torch.einsum("bkhw,bchw->bkc", att, feat)
        z = torch.einsum("bkhw,bhw->bk", att, F.adaptive_avg_pool2d(depth, feat.shape[-2:])[:, 0])  # expected depth
        points, full = self.back_project(pos, z, offset, s)
        video = self.video(torch.cat([pooled, fourier_features(full, 4)], dim=-1))
        spread = self._spread(att)  # (B, K): how sharp each map is
        depth_tok = self.depth(torch.cat([fourier_features(points / self.max_depth, 6), spread[..., None]], dim=-1))
        return video + self.identity, depth_tok + self.identity, points

    def back_project(self, pos: torch.Tensor, z: torch.Tensor, offset: torch.Tensor, crop: int):
        """Keypoints of a crop to camera-frame 3D points.

        Args:
            pos: ``(B, K, 2)`` positions ``(x right, y down)`` in [-1, 1] of a ``crop`` px crop.
            z: ``(B, K)`` depth along the optical axis, m (what MuJoCo's depth rendering gives).
            offset: ``(B, 2)`` the crop's top-left corner in the full frame, px.
            crop: the crop's side, px.

        Returns:
            ``(points (B, K, 3), full (B, K, 2))``: metres, x right, y up, z along the optical axis; and
            the positions in [-1, 1] of the full frame.
        """
        pix = (pos + 1) / 2 * crop + offset[:, None, :]  # full-frame pixel coordinates (x right, y down)
        ray = (pix - self.image_size / 2) / self.focal
        points = torch.stack([ray[..., 0] * z, -ray[..., 1] * z, z], dim=-1)
        return points, pix / self.image_size * 2 - 1

    @staticmethod
    def _spread(att: torch.Tensor) -> torch.Tensor:
        """Entropy of each keypoint's map over log(pixels): 0 for one pixel, 1 for a uniform map."""
        p = att.flatten(2)
        return -(p * (p + 1e-9).log()).sum(-1) / math.log(p.shape[-1])
