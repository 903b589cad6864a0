"""Seed 003's Table 3 analogue: MPPI with each learned world model, pretrained and from scratch.

For one environment (``hopper``, ``walker2d`` or ``go1``) and its control dataset (App. C.5,
``ws collect --history Th``, so that windows hold executed history and then a sampled
rollout), every model kind is trained twice on the same windows, with the same steps and
learning rate:

* ``pretrained``: fine-tuned from its corpus-pretrained checkpoint (``ws pretrain``);
* ``scratch``: the same configuration from random weights.

The model's prediction horizon is the MPPI horizon. MPPI, with the environment's default
settings, then runs with each model on the same episode seeds, beside oracle MPPI (the
upper bound) and any extra checkpoints (e.g. the shipped per-system MLPEnsemble). The
score is the accumulated reward (Hopper, Walker2d: Gymnasium's; Go1: the goal-directed
progress of eq. 36), mean ± std over seeds.

Everything is cached in the output directory, so an interrupted run resumes: trained
models in ``<env>/models/<kind>-<variant>.pt`` and every episode in
``<env>/episodes/<controller>-seed<N>.json``. Each cached item records what made it (a model: its
pretrained checkpoint and training settings; an episode: the step limit, termination, the
controller settings and the SHA-256 of the model file); one made differently is redone, never
reused, so a rerun into the same directory with another ``--max-steps`` or ``--config`` is
correct. A model's training interrupted part-way (``<kind>-<variant>.training.json`` records the
settings it began with, ``<kind>-<variant>.pt.state`` its optimiser) resumes from where it stopped
when rerun with the same settings, so a long, time-budgeted fine-tuning can span sessions. After each
environment, ``table3.md``,
``table3.json`` and ``table3.png`` are rebuilt from every environment present under the
output directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .config import ControllerConfig
from .report import write_json_atomic
from .runner import make_controller, run_episode

__all__ = ["VARIANTS", "train_variant", "run_control_table", "render_table"]

log = logging.getLogger(__name__)

VARIANTS = ("pretrained", "scratch")
ORACLE = "oracle"


def train_variant(pretrained, variant: str, train_ds, val_ds, mj_model, train_cfg, out: Path, seed: int = 0,
                  progress: bool = True, device: str = "cpu", resume: bool = False,
                  action_effect: dict | None = None, frame_skip: int | None = None) -> dict:
    """Train one model on a control dataset, from the pretrained weights or from scratch.

    Args:
        pretrained: a ``TrajectoryWorldModel`` from ``ws pretrain``; its kind and network
            configuration are used for both variants.
        variant: ``"pretrained"`` (fine-tune its weights) or ``"scratch"`` (random weights).
        train_ds, val_ds: the control dataset's splits (``ws_sim.dataset.TrajectoryDataset``).
        mj_model: the environment's ``MjModel`` (kinematic structure).
        train_cfg: a ``ws_worldmodel.pretrain.PretrainConfig``; ``history + horizon`` is the
            window length.
        out: checkpoint path (written atomically, best validation loss).
        seed: weights and batch stream.
        device: torch device of the training (``"cpu"``, ``"cuda"``); the checkpoint is device-free.
        resume: continue from ``out``'s training state (``<out>.state``) if there is one; the caller
            makes sure it was written with the same settings.
        action_effect: ``{"weight": w, "noise": s}`` trains a WestWorld with
            ``ws_worldmodel.action_effect.ActionEffectLoss`` (every window and its MuJoCo twin with future
            actions perturbed by ``s`` half control ranges, plus ``w`` times their action-effect error);
            None: the model's own loss. Needs ``frame_skip``, the environment's.

    Returns:
        the training history of ``ws_worldmodel.pretrain.pretrain``.

    Raises:
        ValueError: unknown variant, windows too long for the dataset's segments, a padded
            MLPEnsemble too small for the environment, or the action-effect loss for a model other
            than WestWorld, without ``frame_skip`` or with bad settings.
    """
    from ws_worldmodel.pretrain import pretrain, windows_from_splits

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if action_effect is not None and (pretrained.kind != "westworld" or frame_skip is None):
        raise ValueError(f"the action-effect loss trains a WestWorld given the environment's frame_skip; got a "
                         f"{pretrained.kind} and frame_skip {frame_skip}")
    length = train_cfg.history + train_cfg.horizon
    try:
        train_w, val_w = windows_from_splits(train_ds, [val_ds], mj_model, length, train_cfg.stride)
    except ValueError as e:
        raise ValueError(f"{e}: collect the control dataset with 'ws collect --history {train_cfg.history}' "
                         f"(windows are {train_cfg.history} history + {train_cfg.horizon} predicted steps)") from e
    cfg = pretrained.net.cfg
    if pretrained.kind == "padded_mlp_ensemble" and (cfg.max_state_dim < train_w.states.shape[2]
                                                     or cfg.max_action_dim < train_w.actions.shape[2]):
        raise ValueError(f"the padded MLPEnsemble takes {cfg.max_state_dim} state / {cfg.max_action_dim} action "
                         f"channels; {train_ds.env} has {train_w.states.shape[2]} / {train_w.actions.shape[2]} "
                         "(pretrain it with larger --max-state-dim / --max-action-dim)")
    loss_fn = None
    if action_effect is not None:
        from ws_worldmodel.action_effect import ActionEffectLoss

        loss_fn = ActionEffectLoss(mj_model, frame_skip, train_w.state_channels, train_w.action_channels,
                                   noise=action_effect["noise"], weight=action_effect["weight"], seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        return pretrain([train_w], [val_w], dataclasses.replace(cfg), train_cfg, out, seed=seed, progress=progress,
                        device=device, init_from=pretrained if variant == "pretrained" else None, resume=resume,
                        loss_fn=loss_fn)
    finally:
        if loss_fn is not None:
            loss_fn.close()


def _episode(env, spec: str, config: ControllerConfig, seed: int, nthread: int | None, bar) -> dict:
    ctrl = make_controller(env, spec, config, seed=seed, nthread=nthread)
    try:
        res = run_episode(env, ctrl, seed, progress=bar)
    finally:
        ctrl.close()
    ep = {**res.summary(), "rewards": [round(r, 5) for r in res.rewards]}
    bonus = getattr(getattr(env, "task", None), "healthy_reward", None)
    if res.healthy_steps is not None and bonus is not None:
        # Hopper-v2's reward (seed 003's code): the healthy bonus on every step, fallen or not
        ep["reward_bonus_every_step"] = round(res.reward + bonus * (res.length - res.healthy_steps), 3)
    return ep


def run_control_table(env_name: str, train_ds, val_ds, pretrained: dict[str, str], out_dir: str | Path,
                      train_cfg, controller_cfg: ControllerConfig, variants: Sequence[str] = VARIANTS,
                      seeds: Sequence[int] = range(100, 105), max_steps: int = 1000,
                      extra: dict[str, str] | None = None, nthread: int | None = None, seed: int = 0,
                      printer=tqdm.write, device: str = "cpu", terminate_when_unhealthy: bool = True,
                      action_effect: dict | None = None) -> dict:
    """Train every model variant, run MPPI with each over ``seeds``, and write the table.

    Args:
        env_name: ``hopper``, ``walker2d`` or ``go1``.
        train_ds, val_ds: the control dataset (``ws collect --history``).
        pretrained: model kind -> pretrained checkpoint path.
        out_dir: output directory (``<out_dir>/<env_name>/...`` and the combined table).
        train_cfg: ``PretrainConfig``; its ``horizon`` must be at least the MPPI horizon.
        controller_cfg: MPPI and cost settings.
        variants: subset of ``("pretrained", "scratch")``.
        seeds: episode reset seeds (the planner's noise uses the same seed).
        max_steps: episode step limit.
        extra: label -> checkpoint of further learned models run as they are.
        nthread: oracle rollout threads.
        seed: training seed.
        device: where the models train (``"cpu"``, ``"cuda"``); MPPI then runs them on the CPU.
        terminate_when_unhealthy: ``False`` (Hopper, Walker2d): episodes go on after a fall, seed
            003's protocol for its Table 3; the results go to the column ``<env>-no-termination``
            (``<out_dir>/<env>-no-termination/``) and the models are those of ``<out_dir>/<env>/models``,
            trained once for both columns. Its "fell" counts are then 0.
        action_effect: ``{"weight": w, "noise": s}``: WestWorlds train with the action-effect loss (see
            :func:`train_variant`); other kinds with their own loss. None: every model with its own.

    Returns:
        ``{controller: {"reward_mean", "reward_std", "episodes": [...], ...}}`` for this environment.
        Without termination each controller also has ``reward_bonus_every_step_mean`` / ``_std``
        (``Hopper-v2``'s reward: Gymnasium's plus the healthy bonus on every unhealthy step, as seed
        003's code runs it) and ``healthy_steps_mean``.

    Raises:
        ValueError: the model horizon is shorter than the MPPI horizon, or an unknown variant.
    """
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import load_checkpoint

    if train_cfg.horizon < controller_cfg.mppi.horizon:
        raise ValueError(f"models predict {train_cfg.horizon} steps but MPPI plans {controller_cfg.mppi.horizon}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variants {bad}; choose from {VARIANTS}")
    root = Path(out_dir)
    env = make_env(env_name, max_episode_steps=max_steps, terminate_when_unhealthy=terminate_when_unhealthy)
    env_dir = root / (env_name if terminate_when_unhealthy else f"{env_name}-no-termination")
    models_dir = root / env_name / "models"
    (env_dir / "episodes").mkdir(parents=True, exist_ok=True)
    controllers: dict[str, str] = {ORACLE: ORACLE}
    for kind, path in pretrained.items():
        base = load_checkpoint(path)
        if not hasattr(base, "systems"):
            raise ValueError(f"{path} is not a trajectory world model from 'ws pretrain'")
        for variant in variants:
            ckpt = models_dir / f"{kind}-{variant}.pt"
            ae = action_effect if base.kind == "westworld" else None
            made_by = _as_json({"pretrained_from": str(path), "train": dataclasses.asdict(train_cfg),
                                "seed": int(seed), **({"action_effect": ae} if ae else {})})
            stale = ckpt.is_file() and _made_by(ckpt.with_suffix(".json")) != made_by
            if stale:
                printer(f"{env_name}: {ckpt} was trained with other settings; training it again")
            if stale or not ckpt.is_file():
                # a training interrupted with these settings resumes from its state; one from other settings restarts
                started = ckpt.with_suffix(".training.json")
                resume = _made_by(started) == made_by and Path(f"{ckpt}.state").is_file()
                if not resume:
                    models_dir.mkdir(parents=True, exist_ok=True)
                    Path(f"{ckpt}.state").unlink(missing_ok=True)
                    write_json_atomic({"made_by": made_by}, started)
                printer(f"{env_name}: {'resuming' if resume else 'training'} {kind} ({variant}) on the control "
                        f"dataset -> {ckpt}")
                hist = train_variant(base, variant, train_ds, val_ds, env.model, train_cfg, ckpt, seed=seed,
                                     device=device, resume=resume, action_effect=ae, frame_skip=env.frame_skip)
                write_json_atomic({"kind": base.kind, "variant": variant, "made_by": made_by,
                                   "pretrained_from": str(path), "steps": hist["steps"],
                                   "best_val_loss": hist["best_val_loss"], "evals": hist["evals"]},
                                  ckpt.with_suffix(".json"))
            controllers[f"{kind} ({variant})"] = str(ckpt)
    for label, path in (extra or {}).items():
        controllers[label] = str(path)
    results = {}
    bar = tqdm(total=len(controllers) * len(seeds) * max_steps, desc=f"MPPI {env_name}", unit="step")
    for label, spec in controllers.items():
        eps = []
        made_by = _as_json({"max_steps": int(max_steps), "terminate_when_unhealthy": bool(terminate_when_unhealthy),
                            "controller": controller_cfg.to_dict(), "dynamics": spec,
                            "dynamics_sha256": _sha256(spec), "records": "healthy_steps"})
        for s in seeds:
            f = env_dir / "episodes" / f"{_safe(label)}-seed{s}.json"
            ep = json.loads(f.read_text()) if f.is_file() else None
            if ep is not None and ep.get("made_by") == made_by:
                bar.update(max_steps)
            else:
                if ep is not None:
                    printer(f"  {env_name} {label}: {f} was run with other settings; running it again")
                ep = {**_episode(env, spec, controller_cfg, int(s), nthread, bar), "made_by": made_by}
                bar.update(max_steps - ep["length"])
                write_json_atomic(ep, f)
            eps.append(ep)
            printer(f"  {env_name} {label:<26} seed {s:>4}  reward {ep['reward']:9.2f}  length {ep['length']:5d}"
                    f"  planner p50 {ep['latency_ms_median']:.1f} ms")
        r = np.array([e["reward"] for e in eps])
        extra_stats = {}
        if not terminate_when_unhealthy and all("reward_bonus_every_step" in e for e in eps):
            rb = np.array([e["reward_bonus_every_step"] for e in eps])
            extra_stats = {"reward_bonus_every_step_mean": float(rb.mean()), "reward_bonus_every_step_std": float(rb.std()),
                           "healthy_steps_mean": float(np.mean([e["healthy_steps"] for e in eps]))}
        results[label] = {"checkpoint": spec, "reward_mean": float(r.mean()), "reward_std": float(r.std()),
                          **extra_stats,
                          "length_mean": float(np.mean([e["length"] for e in eps])),
                          "fell": int(sum(e["terminated"] for e in eps)),
                          "planner_ms_median": float(np.median([e["latency_ms_median"] for e in eps])),
                          "episodes": [{k: v for k, v in e.items() if k not in ("rewards", "made_by")}
                                       for e in eps]}
    bar.close()
    env.close()
    write_json_atomic({"env": env_name, "terminate_when_unhealthy": terminate_when_unhealthy,
                       "seeds": list(map(int, seeds)), "max_steps": max_steps,
                       "controller": controller_cfg.to_dict(), "train": dataclasses.asdict(train_cfg),
                       "results": results}, env_dir / "results.json")
    render_table(root)
    return results


def _as_json(obj):
    """``obj`` as it reads back from JSON (tuples become lists), so a record compares equal to its file."""
    return json.loads(json.dumps(obj))


def _made_by(meta: Path):
    """What made a cached model (``None`` for a file from before this was recorded, or none)."""
    try:
        return json.loads(meta.read_text()).get("made_by")
    except (OSError, ValueError):
        return None


def _sha256(spec: str):
    """SHA-256 of a model file, so an episode of a model since retrained is not reused; ``None``
    for the oracle, zero action and other specs that are not files."""
    p = Path(spec)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)


def render_table(root: str | Path) -> str:
    """Rebuild ``table3.md``, ``table3.json`` and ``table3.png`` from every ``<env>/results.json``
    under ``root``; returns the markdown. A column without termination also gives the reward with
    the healthy bonus paid on every step (``Hopper-v2``'s reward, which seed 003's code runs) and the
    mean number of healthy steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    per_env = {}
    for f in sorted(root.glob("*/results.json")):
        per_env[f.parent.name] = json.loads(f.read_text())
    if not per_env:
        raise FileNotFoundError(f"no */results.json under {root}")
    envs = list(per_env)
    rows = []
    for e in envs:
        for label in per_env[e]["results"]:
            if label not in rows:
                rows.append(label)
    rows.sort(key=lambda r: (r != ORACLE, r))
    seeds = {e: len(per_env[e]["seeds"]) for e in envs}
    head = "| model | " + " | ".join(f"{e} ({seeds[e]} seeds, {per_env[e]['max_steps']} steps)" for e in envs) + " |"
    lines = [head, "|---|" + "---|" * len(envs)]
    for label in rows:
        cells = []
        for e in envs:
            r = per_env[e]["results"].get(label)
            digits = 2 if r is not None and abs(r["reward_mean"]) < 10 else 1  # Go1 progress is metres
            cells.append("-" if r is None else f"{r['reward_mean']:.{digits}f} ± {r['reward_std']:.{digits}f}"
                         + (f" ({r['fell']} fell)" if r["fell"] else "")
                         + (f"; bonus on every step {r['reward_bonus_every_step_mean']:.1f} ± "
                            f"{r['reward_bonus_every_step_std']:.1f}, healthy {r['healthy_steps_mean']:.0f} steps"
                            if "reward_bonus_every_step_mean" in r else ""))
        name = "oracle MPPI (upper bound)" if label == ORACLE else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    (root / "table3.md").write_text(md)
    write_json_atomic({e: per_env[e] for e in envs}, root / "table3.json")
    fig, axes = plt.subplots(1, len(envs), figsize=(5.5 * len(envs), 4.2), squeeze=False)
    for ax, e in zip(axes[0], envs):
        res = per_env[e]["results"]
        labels = [r for r in rows if r in res and r != ORACLE]
        means = [res[r]["reward_mean"] for r in labels]
        stds = [res[r]["reward_std"] for r in labels]
        colors = ["C0" if "(pretrained)" in r else "C1" if "(scratch)" in r else "C2" for r in labels]
        ax.barh(range(len(labels)), means, xerr=stds, color=colors, alpha=0.8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        if ORACLE in res:
            ax.axvline(res[ORACLE]["reward_mean"], color="k", ls="--", label="oracle MPPI")
            ax.legend(fontsize=8)
        ax.set_xlabel("accumulated reward" + (" (eq. 36 progress, m)" if e == "go1" else ""))
        ax.set_title(f"{e}: MPPI with learned dynamics")
    fig.tight_layout()
    fig.savefig(root / "table3.png", dpi=110)
    plt.close(fig)
    return md
