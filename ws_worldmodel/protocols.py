"""Evaluation protocols of seed 003 (sec. 5; App. C.2, D.2), writing tables and plots.

Zero-shot (Table 1, App. D.2): on systems never seen in pretraining, every episode is cut
into 150-step segments; each model sees the first 50 steps (states and actions) and the
actions of the next 100, and predicts those 100 states. MAE and MSE are averaged over
steps and channels in min-max normalised units (each system normalised by its own data's
ranges, as the seed normalises every dataset), so systems and channels weigh alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ws_sim.channels import data_ranges
from ws_sim.dataset import TrajectoryDataset

from .data import SystemData, collate

__all__ = ["zero_shot", "format_table"]


def _eval_windows(ds: TrajectoryDataset, model, length: int, stride: int) -> SystemData:
    ds = dataclasses.replace(ds)
    ds.state_channels = data_ranges(ds.state_channels, np.concatenate([ds.observations, ds.next_observations]))
    ds.action_channels = data_ranges(ds.action_channels, ds.actions)
    return SystemData.from_dataset(ds, model, length, stride)


@torch.no_grad()
def _predict_all(net, sysd: SystemData, history: int, max_windows: int, batch_size: int = 32):
    idx = np.linspace(0, len(sysd) - 1, min(len(sysd), max_windows)).astype(int)
    preds, trues = [], []
    for k in range(0, len(idx), batch_size):
        batch = collate([(sysd, int(i)) for i in idx[k:k + batch_size]], history)
        preds.append(net.predict(batch))
        trues.append(batch.states[:, history:])
    return torch.cat(preds).numpy(), torch.cat(trues).numpy(), idx


def format_table(results: dict, metric_names: Sequence[str] = ("mae", "mse")) -> str:
    """A markdown table: one row per model, MAE and MSE columns per system."""
    systems = list(next(iter(results.values())))
    head = "| model | " + " | ".join(f"{s} {m.upper()}" for s in systems for m in metric_names) + " |"
    sep = "|---|" + "---|" * (len(systems) * len(metric_names))
    rows = [f"| {name} | " + " | ".join(f"{res[s][m]:.4f}" for s in systems for m in metric_names) + " |"
            for name, res in results.items()]
    return "\n".join([head, sep, *rows])


def zero_shot(models: dict, datasets: dict, mj_models: dict, out_dir: str | os.PathLike, history: int = 50,
              horizon: int = 100, stride: int = 150, max_windows: int = 64) -> dict:
    """Run the zero-shot protocol and write ``zero_shot.json``, ``zero_shot.md`` and one
    ``zero_shot_<system>.png`` of predicted against true trajectories (the seed's Fig. 2).

    Args:
        models: name -> a loaded :class:`~ws_worldmodel.pretrain.TrajectoryWorldModel`.
        datasets: system name -> its :class:`TrajectoryDataset` (unseen in pretraining).
        mj_models: system name -> its ``MjModel`` (for the structural indices).
        out_dir: where the table and plots go.
        history, horizon: observed and predicted steps (the seed: 50 and 100).
        stride: step between segment starts (150: disjoint segments, as the seed).
        max_windows: segments per system at most (evenly spread).

    Returns:
        ``{model: {system: {"mae", "mse", "segments"}}}``.

    Raises:
        ValueError: a system has no episode of ``history + horizon`` steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    windows = {s: _eval_windows(ds, mj_models[s], history + horizon, stride) for s, ds in datasets.items()}
    results: dict = {}
    examples: dict = {}
    for name, model in models.items():
        results[name] = {}
        for s, sysd in windows.items():
            pred, true, _ = _predict_all(model.net, sysd, history, max_windows)
            err = pred - true
            results[name][s] = {"mae": float(np.abs(err).mean()), "mse": float(np.square(err).mean()),
                                "segments": int(len(pred))}
            examples.setdefault(s, {"true": true[0]})[name] = pred[0]
    for s, ex in examples.items():
        sysd = windows[s]
        chans = list(range(min(4, sysd.states.shape[2])))
        fig, axes = plt.subplots(1, len(chans), figsize=(4 * len(chans), 3.2), squeeze=False)
        t = np.arange(history, history + horizon)
        for ax, c in zip(axes[0], chans):
            hist = sysd.states[0, :history, c]
            ax.plot(np.arange(history), hist, color="0.5", label="history")
            ax.plot(t, ex["true"][:, c], color="k", label="true")
            for i, name in enumerate(models):
                ax.plot(t, ex[name][:, c], color=f"C{i}", label=name)
            ax.set_title(sysd.state_channels[c].name, fontsize=9)
            ax.set_xlabel("step")
        axes[0][0].set_ylabel("normalised value")
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(f"zero-shot on {s}: {history} steps observed, {horizon} predicted")
        fig.tight_layout()
        fig.savefig(out_dir / f"zero_shot_{s}.png", dpi=100)
        plt.close(fig)
    (out_dir / "zero_shot.json").write_text(json.dumps({"history": history, "horizon": horizon, "results": results},
                                                       indent=2))
    (out_dir / "zero_shot.md").write_text(format_table(results) + "\n")
    return results
