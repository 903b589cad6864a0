"""Evaluation protocols of seed 003 (sec. 5; App. C.2, D.2), writing tables and plots.

Zero-shot (Table 1, App. D.2): on systems never seen in pretraining, every episode is cut
into 150-step segments; each model sees the first 50 steps (states and actions) and the
actions of the next 100, and predicts those 100 states. MAE and MSE are averaged over
steps and channels in min-max normalised units (each system normalised by its own data's
ranges, as the seed normalises every dataset), so systems and channels weigh alike.

Scalability (Fig. 3, App. C.4): pretrain on N = 1, 2, 5, ... environments with a fixed
budget per environment and report the validation error against N.

Few-shot (Table 2, App. C.3, E): fine-tune on a few episodes of an unseen system with early
stopping on validation episodes, test on held-back episodes, against the same training
from random weights.

Open loop (not in the seed): the error at each step ahead of any dynamics checkpoints (a one-step
MLPEnsemble rolled out, a trajectory model's one prediction) on the same windows of one system's
control data, normalised by its training split's ranges, as ``ws eval control`` trains and scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ws_sim.channels import data_ranges
from ws_sim.dataset import TrajectoryDataset

from .data import SystemData, collate

__all__ = ["zero_shot", "few_shot", "routing", "scalability", "format_table", "open_loop"]


NORMALISATIONS = ("history", "dataset")


def _history_states(ds: TrajectoryDataset, length: int, stride: int, history: int) -> np.ndarray:
    """The observed (first ``history``) states of every segment window that
    :meth:`SystemData.from_dataset` cuts with ``length`` and ``stride``: ``(M, Cs)``."""
    rows = []
    for seg in ds.segments():
        obs, n = seg["observations"], len(seg["actions"])
        for start in range(0, n - length + 2, stride):
            rows.append(obs[start:start + history])
    if not rows:
        raise ValueError(f"no segment of {length} steps")
    return np.concatenate(rows)


def _eval_windows(ds: TrajectoryDataset, model, length: int, stride: int, history: int | None = None,
                  normalisation: str = "history") -> SystemData:
    """Windows of a held-out system, min-max normalised by statistics of its own data.

    The ranges are recomputed here, whatever the dataset's metadata carries (a corpus shard's,
    ``ws collect``'s or a plain D4RL file's data ranges):

    * ``"history"``: per state channel, the min and max over the observed histories (the first
      ``history`` states) of the segments, never a predicted step (with ``stride`` at least the
      segment length no segment's history overlaps another's future); actions, which every
      model is given for history and horizon alike, by all of them.
    * ``"dataset"``: the seed's per-dataset normalisation, the min and max over all the
      system's states (``observations`` and ``next_observations``: histories and targets
      alike) and all its actions.

    Neither uses a statistic of any model's prediction, and every model and the reference row
    are scored in the same units.

    Raises:
        ValueError: an unknown ``normalisation``, or ``"history"`` without ``history``.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    ds = dataclasses.replace(ds)
    if normalisation == "history":
        if history is None:
            raise ValueError("the history normalisation needs the history length")
        ds.state_channels = data_ranges(ds.state_channels, _history_states(ds, length, stride, history))
    else:
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
              horizon: int = 100, stride: int = 150, max_windows: int = 64, normalisation: str = "history") -> dict:
    """Run the zero-shot protocol and write ``zero_shot.json``, ``zero_shot.md`` and one
    ``zero_shot_<system>.png`` of predicted against true trajectories (the seed's Fig. 2).

    Args:
        models: name -> a loaded :class:`~ws_worldmodel.pretrain.TrajectoryWorldModel`.
        datasets: system name -> its :class:`TrajectoryDataset` (unseen in pretraining): corpus
            systems, ``ws collect`` datasets or plain D4RL files
            (:func:`ws_sim.corpus.load_datasets`). Each is normalised by min-max ranges of its
            own data (see ``normalisation``), not by the ranges its metadata carries.
        mj_models: system name -> its ``MjModel`` (for the structural indices).
        out_dir: where the table and plots go.
        history, horizon: observed and predicted steps (the seed: 50 and 100).
        stride: step between segment starts (150: disjoint segments, as the seed).
        max_windows: segments per system at most (evenly spread).
        normalisation: ``"history"`` (state ranges from the segments' observed histories only,
            never their targets) or ``"dataset"`` (the seed's: all of the system's states, targets
            included); see :func:`_eval_windows`. Written to ``zero_shot.json``.

    Returns:
        ``{model: {system: {"mae", "mse", "segments"}}}``, plus the model-free reference row
        ``"hold-last-state"`` (the last observed state held for the whole horizon).

    Raises:
        ValueError: a system has no episode of ``history + horizon`` steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    windows = {s: _eval_windows(ds, mj_models[s], history + horizon, stride, history, normalisation)
               for s, ds in datasets.items()}
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
    # a model-free reference row: hold the last observed state for the whole horizon
    results["hold-last-state"] = {}
    for s, sysd in windows.items():
        idx = np.linspace(0, len(sysd) - 1, min(len(sysd), max_windows)).astype(int)
        true = sysd.states[idx, history:]
        err = sysd.states[idx, history - 1:history] - true
        results["hold-last-state"][s] = {"mae": float(np.abs(err).mean()), "mse": float(np.square(err).mean()),
                                         "segments": int(len(idx))}
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
    (out_dir / "zero_shot.json").write_text(json.dumps({"history": history, "horizon": horizon,
                                                        "normalisation": normalisation, "results": results}, indent=2))
    (out_dir / "zero_shot.md").write_text(format_table(results) + "\n")
    return results


def few_shot(model, dataset: TrajectoryDataset, mj_model, cfg, out_dir: str | os.PathLike,
             train_episodes: Sequence[int] = (10,), val_episodes: int = 5, test_episodes: int = 5,
             seed: int = 0, progress: bool = False, peft_blocks: int | None = None,
             device: str | None = None) -> dict:
    """Few-shot adaptation (seed 003 Table 2, App. C.3 and E): fine-tune on ``n`` episodes of an
    unseen system, early-stopped on validation episodes, and test on others; the same from
    random weights. Writes ``few_shot.json``, ``few_shot.md`` and ``few_shot_curve.png``
    (test MSE against ``n``, pretrained vs from scratch, the seed's Fig. 6).

    Args:
        model: a pretrained :class:`~ws_worldmodel.pretrain.TrajectoryWorldModel`.
        dataset: the unseen system's episodes: the first ``max(train_episodes)`` train, the
            next ``val_episodes`` validate, the last ``test_episodes`` test. Channels are
            normalised by the ranges of the fine-tuning and validation episodes.
        mj_model: its ``MjModel``.
        cfg: a :class:`~ws_worldmodel.pretrain.PretrainConfig` for fine-tuning (steps, lr,
            history, horizon, ...).
        train_episodes: the fine-tuning set sizes of the curve.
        peft_blocks: fine-tune the pretrained model parameter-efficiently (only the last
            ``peft_blocks`` blocks, queries and head; Table 11); from scratch trains everything.
        device: where the models train (``"cpu"``, ``"cuda"``; None: CUDA when present).

    Returns:
        ``{n: {"pretrained": {"mae", "mse"}, "scratch": {...}}}``.

    Raises:
        ValueError: too few episodes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pretrain import episode_subset, pretrain, windows_from_splits

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_max = max(train_episodes)
    total = len(dataset.segment_bounds())
    if n_max + val_episodes + test_episodes > total:
        raise ValueError(f"{dataset.env!r} has {total} episodes; need {n_max} + {val_episodes} + {test_episodes}")
    val_ds = episode_subset(dataset, n_max, n_max + val_episodes)
    test_ds = episode_subset(dataset, total - test_episodes, total)
    length = cfg.history + cfg.horizon
    results: dict = {}
    for n in sorted(train_episodes):
        train_ds = episode_subset(dataset, 0, n)
        # ranges from all the data adaptation may look at (fine-tuning and validation
        # episodes): a single short episode can span a sliver of a channel's range
        train_w, val_w, test_w = windows_from_splits(train_ds, [val_ds, test_ds], mj_model, length, cfg.stride,
                                                     ranges_from=[train_ds, val_ds])
        results[n] = {}
        for label, init in (("pretrained", model), ("scratch", None)):
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = Path(tmp) / "ft.pt"
                pretrain([train_w], [val_w], model.net.cfg, cfg, ckpt, seed=seed, progress=progress, init_from=init,
                         peft_blocks=peft_blocks if init is not None else None, device=device)
                from .checkpoint import load_checkpoint

                best = load_checkpoint(ckpt) if ckpt.is_file() else None
            net = best.net if best is not None else model.net
            pred, true, _ = _predict_all(net, test_w, cfg.history, max_windows=256)
            err = pred - true
            results[n][label] = {"mae": float(np.abs(err).mean()), "mse": float(np.square(err).mean())}
    ns = sorted(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, color in (("pretrained", "C0"), ("scratch", "C1")):
        ax.plot(ns, [results[n][label]["mse"] for n in ns], "o-", color=color, label=label)
    ax.set_xlabel("fine-tuning episodes")
    ax.set_ylabel("test MSE (normalised)")
    ax.set_title(f"few-shot on {dataset.env}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "few_shot_curve.png", dpi=100)
    plt.close(fig)
    (out_dir / "few_shot.json").write_text(json.dumps({"system": dataset.env, "peft_blocks": peft_blocks,
                                                       "results": results}, indent=2))
    lines = ["| episodes | pretrained MAE | pretrained MSE | scratch MAE | scratch MSE |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['pretrained']['mae']:.4f} | {r['pretrained']['mse']:.4f} | {r['scratch']['mae']:.4f} | "
              f"{r['scratch']['mse']:.4f} |" for n, r in sorted(results.items())]
    (out_dir / "few_shot.md").write_text("\n".join(lines) + "\n")
    return results


@torch.no_grad()
def routing(model, windows: dict, out_dir: str | os.PathLike, history: int, max_windows: int = 64) -> dict:
    """Mean Sys-MoE routing weights per system and block (seed 003 Fig. 4): a heatmap of
    systems x experts per block in ``routing.png`` and the numbers in ``routing.json``.

    Args:
        model: a WestWorld :class:`~ws_worldmodel.pretrain.TrajectoryWorldModel`.
        windows: system name -> :class:`~ws_worldmodel.data.SystemData`.

    Returns:
        ``{system: [[weight per expert] per block]}`` averaged over windows and channels.

    Raises:
        ValueError: the model has no router (not WestWorld, or the dense ablation).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if getattr(model, "kind", None) != "westworld" or not model.net.cfg.use_moe:
        raise ValueError("routing weights exist only for WestWorld with Sys-MoE")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {}
    for name, sysd in windows.items():
        idx = np.linspace(0, len(sysd) - 1, min(len(sysd), max_windows)).astype(int)
        batch = collate([(sysd, int(i)) for i in idx], history)
        _, gates = model.net.eval()(batch)
        res[name] = [g.mean((0, 1)).tolist() for g in gates]
    names = list(res)
    n_blocks = len(next(iter(res.values())))
    fig, axes = plt.subplots(1, n_blocks, figsize=(3 + 2.2 * n_blocks, 0.6 + 0.35 * len(names)), squeeze=False)
    for b, ax in enumerate(axes[0]):
        mat = np.array([res[n][b] for n in names])
        im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, mat.max()))
        ax.set_title(f"block {b}")
        ax.set_xlabel("expert")
        ax.set_xticks(range(mat.shape[1]))
        ax.set_yticks(range(len(names)), names if b == 0 else [""] * len(names), fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle("Sys-MoE routing weights per system")
    fig.tight_layout()
    fig.savefig(out_dir / "routing.png", dpi=100)
    plt.close(fig)
    (out_dir / "routing.json").write_text(json.dumps(res, indent=2))
    return res


def scalability(train: Sequence[SystemData], val: Sequence[SystemData], model_cfgs: dict, cfg, ns: Sequence[int],
                steps_per_env: int, out_dir: str | os.PathLike, seed: int = 0, progress: bool = False,
                device: str | None = None) -> dict:
    """Scalability (seed 003 Fig. 3, App. C.4): pretrain on the first N environments with a
    fixed budget of ``steps_per_env`` optimiser steps per environment, and report the
    validation MAE/MSE of the H-step prediction averaged over those N environments. Writes
    ``scalability.json``, ``scalability.md`` and ``scalability.png`` (error against N).

    Args:
        train, val: windows per environment, in the order environments are added.
        model_cfgs: model name -> config (``WestWorldConfig``, ``TrajWorldConfig`` ...).
        cfg: a :class:`~ws_worldmodel.pretrain.PretrainConfig`; its ``steps`` is replaced by
            ``N * steps_per_env``.
        ns: the environment counts.
        device: where the models train (``"cpu"``, ``"cuda"``; None: CUDA when present).

    Returns:
        ``{model: {N: {"mae", "mse"}}}``.

    Raises:
        ValueError: an N larger than the number of environments.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pretrain import pretrain

    if max(ns) > len(train):
        raise ValueError(f"N = {max(ns)} asked for, but only {len(train)} environments have windows")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, mcfg in model_cfgs.items():
        results[name] = {}
        for n in ns:
            steps = n * steps_per_env  # one validation, at the end of the fixed budget
            run = dataclasses.replace(cfg, steps=steps, eval_every=steps, patience=10**9)
            ev = pretrain(train[:n], val[:n], mcfg, run, None, seed=seed, progress=progress,
                          device=device)["evals"][-1]["systems"]
            results[name][n] = {"mae": float(np.mean([v["mae"] for v in ev.values()])),
                                "mse": float(np.mean([v["mse"] for v in ev.values()]))}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, name in enumerate(model_cfgs):
        ax.plot(list(ns), [results[name][n]["mae"] for n in ns], "o-", color=f"C{i}", label=name)
    ax.set_xlabel("pretraining environments N")
    ax.set_ylabel("validation MAE (normalised)")
    ax.set_xscale("log")
    ax.set_title("scalability")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "scalability.png", dpi=100)
    plt.close(fig)
    (out_dir / "scalability.json").write_text(json.dumps({"steps_per_env": steps_per_env, "results": results}, indent=2))
    lines = ["| N | " + " | ".join(f"{m} MAE | {m} MSE" for m in model_cfgs) + " |",
             "|---|" + "---|---|" * len(model_cfgs)]
    lines += [f"| {n} | " + " | ".join(f"{results[m][n]['mae']:.4f} | {results[m][n]['mse']:.4f}" for m in model_cfgs)
              + " |" for n in ns]
    (out_dir / "scalability.md").write_text("\n".join(lines) + "\n")
    return results


def learning_curves(runs: dict, out_dir: str | os.PathLike) -> dict:
    """Validation MAE against training wall-clock for several pretraining runs, on one plot.

    Args:
        runs: label -> the run's validations, each ``{"step", "wall_s", "val_mae", ...}`` (what
            :func:`ws_worldmodel.pretrain.pretrain` records in ``history["evals"]`` and ``ws pretrain``
            writes to ``CHECKPOINT.curve.json``). Holding the last observed state, when the runs recorded
            it (``systems[*]["hold_last_mae"]``), is drawn as a dashed line.
        out_dir: where ``curves.png`` and ``curves.json`` go.

    Returns:
        ``{label: {"best_val_mae", "at_time_s", "final_val_mae", "time_s", "clock", "steps"}}``: times on the
        clock each run's budget counted (``"wall"``, or ``"cpu"``: its CPU time over its threads), and
        ``"hold_last_state"``'s MAE if recorded.

    Raises:
        ValueError: no runs, or a run without validations.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("no runs to plot")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, hold, clocks = {}, None, set()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, evals in runs.items():
        if not evals:
            raise ValueError(f"run {label!r} has no validations")
        clock = evals[-1].get("clock", "wall")  # what the run's budget counted
        clocks.add(clock)
        t = np.array([e.get(f"{clock}_s", e["wall_s"]) for e in evals])
        mae = np.array([e["val_mae"] for e in evals])
        ax.plot(t / 60.0, mae, marker="o", ms=3, label=label)
        best = int(np.argmin(mae))
        summary[label] = {"best_val_mae": float(mae[best]), "at_time_s": float(t[best]), "final_val_mae": float(mae[-1]),
                          "time_s": float(t[-1]), "clock": clock, "steps": int(evals[-1]["step"])}
        systems = evals[-1].get("systems", {})
        if hold is None and systems and all("hold_last_mae" in v for v in systems.values()):
            hold = float(np.mean([v["hold_last_mae"] for v in systems.values()]))
    if hold is not None:
        ax.axhline(hold, ls="--", c="grey", label="hold the last state")
        summary["hold_last_state"] = hold
    ax.set_xlabel({"wall": "training wall-clock (min)", "cpu": "training time on its own cores (CPU min / threads)"}
                  .get(next(iter(clocks)), "training time (min): wall-clock or CPU over threads, per run")
                  if len(clocks) == 1 else "training time (min): wall-clock or CPU over threads, per run")
    ax.set_ylabel("validation MAE (normalised)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    plt.close(fig)
    (out_dir / "curves.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return summary


def _system_of(model, env: str) -> str:
    systems = list(model.systems)
    if env in systems:
        return env
    if len(systems) == 1:
        return systems[0]
    raise ValueError(f"the model was trained on {systems}, not on {env!r}: fine-tune it on this system first")


@torch.no_grad()
def _predict_windows(label: str, model, train, s_phys: np.ndarray, a_phys: np.ndarray, history: int, horizon: int,
                     batch_size: int) -> np.ndarray:
    """One model's prediction of every window's ``horizon`` future states ``(N, horizon, Cs)``, physical units,
    from the windows' states ``s_phys (N, history + horizon, Cs)`` and actions ``a_phys`` (see :func:`open_loop`)."""
    from .mlp_ensemble import MLPEnsemble

    preds = []
    if isinstance(model, MLPEnsemble):
        model.check_matches(train.state_channels, train.action_channels, f"{label}'s data")
        for k in range(0, len(s_phys), batch_size):
            st = torch.as_tensor(s_phys[k:k + batch_size, history - 1], dtype=torch.float32)
            act = torch.as_tensor(a_phys[k:k + batch_size, history - 1:history - 1 + horizon], dtype=torch.float32)
            preds.append(model.rollout(st, act).double().numpy())
    elif hasattr(model, "systems"):
        system = _system_of(model, train.env)
        th = model.history
        if th > history:
            raise ValueError(f"{label} observes {th} steps, more than the windows' history of {history}")
        channels = [c.name for c in model.systems[system]["state_channels"]]
        if channels != [c.name for c in train.state_channels]:
            raise ValueError(f"{label}'s {system} has state channels {channels}, the data "
                             f"{[c.name for c in train.state_channels]}")
        for k in range(0, len(s_phys), batch_size):
            preds.append(model.predict(system, s_phys[k:k + batch_size, history - th:history],
                                       a_phys[k:k + batch_size, history - th:]))
    else:
        raise TypeError(f"{label} is a {type(model).__name__}: neither an MLPEnsemble nor a trajectory model")
    return np.concatenate(preds)


def _perturbed_futures(mj_model, frame_skip, start: np.ndarray, a_phys: np.ndarray, history: int, horizon: int,
                       action_noise: float, seed: int, sc):
    """The windows' actions with their futures perturbed ``(N, history + horizon, Ca)``, and the true futures
    under the logged and the perturbed actions, normalised ``(N, horizon, Cs)`` each, from MuJoCo started in
    each window's last observed state ``start (N, Cs)``."""
    from ws_sim.oracle import MuJoCoOracle, perturb_actions

    from .data import normalise

    if frame_skip is None or int(frame_skip) < 1:
        raise ValueError(f"the action-effect measure needs the environment's frame_skip (>= 1), got {frame_skip}")
    if start.shape[1] != mj_model.nq + mj_model.nv:
        raise ValueError(f"the action-effect measure replays the data in MuJoCo: its states must be qpos, qvel "
                         f"({mj_model.nq} + {mj_model.nv} channels), the data have {start.shape[1]}")
    oracle = MuJoCoOracle(mj_model, int(frame_skip))
    try:
        a_pert = a_phys.copy()
        fut = slice(history - 1, history - 1 + horizon)
        a_pert[:, fut] = perturb_actions(mj_model, a_pert[:, fut], action_noise, np.random.default_rng(seed))
        x_nom, x_pert = [], []
        for i in range(len(start)):
            both = oracle.rollout(start[i], np.stack([a_phys[i, fut], a_pert[i, fut]]))
            x_nom.append(both[0])
            x_pert.append(both[1])
    finally:
        oracle.close()
    return a_pert, normalise(np.stack(x_nom), sc), normalise(np.stack(x_pert), sc)


def open_loop(models: dict, train: TrajectoryDataset, val: TrajectoryDataset, mj_model, out_dir: str | os.PathLike,
              history: int = 10, horizon: int = 40, stride: int = 5, max_windows: int = 256,
              batch_size: int = 64, action_noise: float = 0.0, frame_skip: int | None = None,
              seed: int = 0) -> dict:
    """The open-loop error of dynamics models at every step ahead, on the same validation windows.

    Each window of ``val`` holds ``history`` observed states and the actions of history and horizon; every
    model predicts the ``horizon`` states that follow from them without seeing any of those states: a
    one-step ``MLPEnsemble`` (``ws train``) is rolled out from the last observed state on its mean
    prediction (as MPPI rolls it out), a trajectory model (``ws pretrain`` or ``ws eval control``: WestWorld,
    TrajWorld, TDM, the padded MLPEnsemble) predicts from its own last ``model.history`` states. Errors are
    in the units the sequence models train in: each channel min-max normalised by the ranges of ``train``
    (states and next states; ``ws eval control``'s normalisation), so a value of 0.01 is 1 % of a channel's
    training range. Holding the last observed state is scored beside them.

    A low error on the logged actions does not show that a model answers to its actions, and MPPI ranks
    action sequences by what the model says they change. With ``action_noise > 0`` every window is also
    replayed with its future actions perturbed (Gaussian, ``action_noise`` times half of each actuator's
    control range, clipped to it), the true futures of both action sequences come from MuJoCo started in
    the window's last observed state (``ws_sim.oracle.MuJoCoOracle``; the data must hold the full ``qpos,
    qvel``), and each model predicts both. Its **action-effect error** is ``mean |(p' - p) - (x' - x)| /
    mean |x' - x|`` over windows and channels (per step ahead and overall): ``x, x'`` the true futures under
    the logged and the perturbed actions, ``p, p'`` the model's. 0 is a model that gets the change every
    action makes exactly; holding the last state, which ignores the actions, scores 1.

    Args:
        models: label -> a loaded checkpoint (``ws_worldmodel.checkpoint.load_checkpoint``).
        train, val: one system's control dataset (``ws collect --history``): the ranges and the windows.
        mj_model: the system's ``MjModel`` (the structural embedding's input).
        out_dir: where ``open_loop.json``, ``open_loop.md`` and ``open_loop.png`` go.
        history, horizon: observed and predicted steps of a window.
        stride: step between window starts; ``max_windows``: windows scored, spread evenly over all.
        batch_size: windows per model call.
        action_noise: the perturbation's standard deviation in half control ranges (0: no action-effect
            measure); ``frame_skip``: the environment's physics steps per control step (needed with it);
            ``seed``: the perturbations' random seed.

    Returns:
        ``{label: {"mae", "mse", "mae_per_step": [horizon floats], "steps_worse_than_holding": int}}``
        with ``"hold last state"`` among the labels; ``mae``/``mse`` average over steps and channels, and
        ``steps_worse_than_holding`` counts the steps ahead where the model misses by more than holding does.
        With ``action_noise > 0`` each also has ``"effect_error"``, ``"effect_error_per_step"`` and
        ``"mae_perturbed"`` (the MAE against the true future under the perturbed actions).

    Raises:
        ValueError: no models, a trajectory model with a longer history than ``history`` or without this
            system, a model of other channels, or no window of ``history + horizon`` steps; with
            ``action_noise``: a negative one, no ``frame_skip``, or data whose states are not ``qpos, qvel``.
        TypeError: a checkpoint that is neither kind.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import denormalise, normalise
    from .pretrain import windows_from_splits

    if not models:
        raise ValueError("no models to score")
    _, win = windows_from_splits(train, [val], mj_model, history + horizon, stride)
    if len(win) == 0:
        raise ValueError(f"no window of {history} + {horizon} steps in the validation data")
    idx = np.linspace(0, len(win) - 1, min(len(win), max_windows)).astype(int)
    s_norm, a_norm = win.states[idx], win.actions[idx]
    sc, ac = win.state_channels, win.action_channels
    s_phys, a_phys = denormalise(s_norm, sc), denormalise(a_norm, ac)
    truth = s_norm[:, history:]
    errors = {"hold last state": s_norm[:, history - 1:history] - truth}
    perturbed = None
    if action_noise:
        perturbed = _perturbed_futures(mj_model, frame_skip, s_phys[:, history - 1], a_phys, history, horizon,
                                       action_noise, seed, sc)
    effects, errors_perturbed = {}, {}
    for label, model in models.items():
        errors[label] = normalise(_predict_windows(label, model, train, s_phys, a_phys, history, horizon,
                                                   batch_size), sc) - truth
        if perturbed is not None:
            a_pert, x_nom, x_pert = perturbed
            p_nom = errors[label] + truth
            p_pert = normalise(_predict_windows(label, model, train, s_phys, a_pert, history, horizon, batch_size), sc)
            effects[label] = (p_pert - p_nom) - (x_pert - x_nom)
            errors_perturbed[label] = p_pert - x_pert
    if perturbed is not None:
        _, x_nom, x_pert = perturbed
        effects["hold last state"] = -(x_pert - x_nom)
        errors_perturbed["hold last state"] = s_norm[:, history - 1:history] - x_pert
        true_effect = np.abs(x_pert - x_nom)
    results = {}
    for label, err in errors.items():
        per_step = np.abs(err).mean(axis=(0, 2))
        results[label] = {"mae": float(np.abs(err).mean()), "mse": float(np.square(err).mean()),
                          "mae_per_step": [float(v) for v in per_step]}
        if perturbed is not None:
            miss = np.abs(effects[label])
            results[label].update(
                effect_error=float(miss.mean() / true_effect.mean()),
                effect_error_per_step=[float(v) for v in miss.mean(axis=(0, 2)) / np.maximum(true_effect.mean(axis=(0, 2)), 1e-12)],
                mae_perturbed=float(np.abs(errors_perturbed[label]).mean()))
    hold = np.array(results["hold last state"]["mae_per_step"])
    for r in results.values():
        worse = np.array(r["mae_per_step"]) > hold
        r["steps_worse_than_holding"] = int(worse.sum())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = sorted({1, 5, 10, 20, horizon} & set(range(1, horizon + 1)))
    eff = perturbed is not None
    lines = ["| model | MAE over the horizon | " + " | ".join(f"step {j}" for j in shown)
             + " | steps worse than holding |" + (" action-effect error (step 1 / all) | MAE, perturbed actions |" if eff else ""),
             "|---|---|" + "---|" * len(shown) + "---|" + ("---|---|" if eff else "")]
    for label, r in results.items():
        lines.append(f"| {label} | {r['mae']:.4f} | " + " | ".join(f"{r['mae_per_step'][j - 1]:.4f}" for j in shown)
                     + f" | {r['steps_worse_than_holding'] if label != 'hold last state' else '-'} |"
                     + (f" {r['effect_error_per_step'][0]:.3f} / {r['effect_error']:.3f} | {r['mae_perturbed']:.4f} |"
                        if eff else ""))
    (out_dir / "open_loop.md").write_text("\n".join(lines) + "\n")
    (out_dir / "open_loop.json").write_text(json.dumps({"env": train.env, "history": history, "horizon": horizon,
                                                        "stride": stride, "windows": int(len(idx)),
                                                        "action_noise": action_noise, "seed": seed,
                                                        "results": results}, indent=1))
    fig, axes = plt.subplots(1, 2 if eff else 1, figsize=(11.0 if eff else 6.4, 4.0), squeeze=False)
    ax = axes[0, 0]
    steps = np.arange(1, horizon + 1)
    for label, r in results.items():
        ax.plot(steps, r["mae_per_step"], ls="--" if label == "hold last state" else "-",
                c="grey" if label == "hold last state" else None, label=label)
    if eff:
        ax2 = axes[0, 1]
        for label, r in results.items():
            ax2.plot(steps, r["effect_error_per_step"], ls="--" if label == "hold last state" else "-",
                     c="grey" if label == "hold last state" else None, label=label)
        ax2.set_xlabel("steps ahead")
        ax2.set_ylabel("action-effect error (1 = ignores the actions)")
        ax2.set_title(f"actions perturbed by {action_noise:g} x half their range")
        ax2.grid(alpha=0.3)
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("MAE (fraction of the training range)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{train.env}: open-loop error on {len(idx)} validation windows")
    fig.tight_layout()
    fig.savefig(out_dir / "open_loop.png", dpi=120)
    plt.close(fig)
    return results
