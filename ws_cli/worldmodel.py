"""Training world models: ``ws train`` (the MLPEnsemble on one dataset) and ``ws pretrain``
(WestWorld or a baseline on a corpus); the corpus windows and options that ``ws eval`` and
``ws distill`` share with them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .common import (add_device, add_seed, add_threads, command, device_of, environments, headless_gl, set_threads,
                     split_list)

log = logging.getLogger("ws")


def corpus_windows(corpus: Path, names: list[str], cfg) -> tuple[list, list]:
    """Train/validation windows of each named corpus system; systems that are absent or whose
    episodes are shorter than a window are skipped with a warning.

    Raises:
        ConfigError: no system is left.
    """
    from ws_mppi.config import ConfigError
    from ws_sim.corpus import load_system, make_system
    from ws_worldmodel.pretrain import system_windows

    train, val = [], []
    for name in names:
        if not (Path(corpus) / name).is_dir():
            log.warning("skipping %s: not in corpus %s", name, corpus)
            continue
        try:
            tr, va = system_windows(load_system(corpus, name), make_system(name).model, cfg.history + cfg.horizon,
                                    cfg.stride, cfg.val_fraction)
        except ValueError as e:  # episodes shorter than a window (e.g. falls under random actions)
            log.warning("skipping %s: %s", name, e)
            continue
        train.append(tr)
        val.append(va)
    if not train:
        raise ConfigError(f"no system of {names} has episodes of {cfg.history + cfg.horizon} steps in both splits")
    return train, val


def pretraining_systems(corpus: Path, systems: str) -> list[str]:
    """The named systems, or every corpus system but the held-out ones.

    Raises:
        FileNotFoundError: no corpus directory, or no system in it.
    """
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT

    corpus = Path(corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus directory {corpus} does not exist (make one with 'ws corpus build')")
    if systems:
        names = split_list(systems)
    else:
        held = set(HELD_OUT_ZERO_SHOT + HELD_OUT_FEW_SHOT)
        names = sorted(p.name for p in corpus.iterdir() if p.is_dir() and p.name not in held)
    if not names:
        raise FileNotFoundError(f"corpus {corpus} holds no system to pretrain on")
    return names


def corpus_training_data(args, **kw) -> tuple:
    """``(cfg, train, val)``: the :func:`pretrain_config` of ``args`` and ``kw``, and the windows
    of ``--corpus``'s pretraining systems (``--systems``, :func:`pretraining_systems`)."""
    names = pretraining_systems(args.corpus, args.systems)
    cfg = pretrain_config(args, **kw)
    train, val = corpus_windows(Path(args.corpus), names, cfg)
    return cfg, train, val


def pretrain_config(args, **kw):
    """A :class:`ws_worldmodel.pretrain.PretrainConfig` from :func:`add_training_args`'s flags
    (those the command has) and ``kw``."""
    from ws_worldmodel.pretrain import PretrainConfig

    flags = ("history", "horizon", "batch_size", "steps", "lr", "eval_every", "stride", "patience")
    given = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    if getattr(args, "time_budget_min", None):
        given["time_budget_s"] = 60.0 * args.time_budget_min
    if getattr(args, "budget_clock", None):
        given["budget_clock"] = args.budget_clock
    return PretrainConfig(**{**given, **kw})


def westworld_config(args, **kw):
    """A :class:`ws_worldmodel.westworld.WestWorldConfig` from :func:`add_net_args`'s flags (without
    ``--experts``: the config's default) and ``kw``."""
    from ws_worldmodel.westworld import WestWorldConfig

    if hasattr(args, "experts"):
        kw["n_experts"] = args.experts
    return WestWorldConfig(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks,
                           expert_hidden=args.expert_hidden, bins=args.bins, d_state=args.d_state, expand=args.expand,
                           target=getattr(args, "target", "absolute"), tokens=getattr(args, "tokens", "channel"), **kw)


def cmd_train(args) -> int:
    """Fit an MLPEnsemble on a dataset and write its checkpoint."""
    import json

    from ws_sim.dataset import read_dataset
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import save_checkpoint
    from ws_worldmodel.mlp_ensemble import MLPEnsemble, MLPEnsembleConfig
    from ws_worldmodel.train import train_mlp_ensemble

    set_threads(args.threads)
    # --env names the environment of plain D4RL files (channels, missing successors) and checks the rest
    from ws_sim.dataset import TrajectoryDataset

    splits = {}
    for name, paths in (("train", args.train), ("val", args.val)):
        parts = [read_dataset(p, env=args.env) for p in paths]
        for p, ds in zip(paths[1:], parts[1:]):
            ds.check_matches(parts[0].state_channels, parts[0].action_channels, f"dataset {p}")
        splits[name] = parts[0] if len(parts) == 1 else TrajectoryDataset.concatenate(parts)
    train, val = splits["train"], splits["val"]
    if args.env:
        env = make_env(args.env)
        train.check_matches(env.state_channels, env.action_channels, f"dataset {args.train[0]}")
        val.check_matches(env.state_channels, env.action_channels, f"dataset {args.val[0]}")
    init = None
    if args.init is not None:
        from ws_worldmodel.checkpoint import load_checkpoint

        init = load_checkpoint(args.init)
        if not isinstance(init, MLPEnsemble):
            raise SystemExit(f"ws train: --init {args.init} is a {type(init).__name__}, not an MLPEnsemble checkpoint")
    cfg = MLPEnsembleConfig(ensemble_size=args.ensemble_size, elites=args.elites, hidden=args.hidden,
                            layers=args.layers, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                            patience=args.patience, max_steps_per_epoch=args.steps_per_epoch,
                            lr_schedule=args.lr_schedule, lr_min=args.lr_min)
    state = Path(f"{args.out}.state")
    if args.resume and not state.is_file():
        raise SystemExit(f"ws train: --resume: no training state {state} (a run with --out {args.out} writes it "
                         "after every epoch)")
    if args.time_budget_min is not None and not args.time_budget_min >= 0:
        raise SystemExit(f"ws train: --time-budget-min must be >= 0 minutes, got {args.time_budget_min}")
    # 0 is a budget too: one more epoch, then the best model so far (e.g. to write a stopped run's model)
    budget = None if args.time_budget_min is None else 60.0 * args.time_budget_min
    model, hist = train_mlp_ensemble(train, val, cfg, seed=args.seed, device=args.device,
                                     val_subsample=args.val_subsample, state_path=state, resume=args.resume,
                                     time_budget_s=budget, init=init)
    info = {"train": [str(p) for p in args.train], "val": [str(p) for p in args.val], "seed": args.seed,
            "env": train.env, "init": None if args.init is None else str(args.init), **hist}
    save_checkpoint(model, args.out, info)
    err = hist["val_one_step"]
    print(json.dumps({"checkpoint": str(args.out), "val_one_step_mse": round(err["model_mse"], 5),
                      "unchanged_state_mse": round(err["unchanged_mse"], 5), "epochs": len(hist["epochs"]),
                      "stopped": hist["stopped"], "state": str(state)}))
    if hist["stopped"] == "time budget":
        print(f"time budget spent: {args.out} holds the best model so far; continue with the same command and "
              "--resume", file=sys.stderr)
    return 0


def cmd_pretrain(args) -> int:
    """Pretrain WestWorld (or a baseline) on the corpus's pretraining systems."""
    import json

    from ws_worldmodel.pretrain import pretrain, write_curve
    from ws_worldmodel.tdm import TDMConfig
    from ws_worldmodel.trajworld import TrajWorldConfig

    headless_gl()
    set_threads(args.threads)
    cfg, train, val = corpus_training_data(args)
    if args.model == "westworld":
        mcfg = westworld_config(args, use_moe=not args.no_moe, use_structure=not args.no_structure)
    elif args.model == "mlp_ensemble":
        mcfg = None  # sized from the data below
    else:
        cls = TrajWorldConfig if args.model == "trajworld" else TDMConfig
        mcfg = cls(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, bins=args.bins,
                   mlp_hidden=args.expert_hidden)
    names = [t.name for t in train]
    if mcfg is None:
        from ws_worldmodel.mlp_ensemble import PaddedMLPEnsembleConfig

        mcfg = PaddedMLPEnsembleConfig(max_state_dim=args.max_state_dim or max(t.states.shape[2] for t in train),
                                       max_action_dim=args.max_action_dim or max(t.actions.shape[2] for t in train))
    hist = pretrain(train, val, mcfg, cfg, args.out, seed=args.seed, resume=args.resume, device=device_of(args))
    if int(os.environ.get("RANK", "0")) == 0:
        curve = write_curve(hist["evals"], args.out)  # the validations against wall-clock (ws eval curves plots them)
        print(json.dumps({"checkpoint": str(args.out), "model": args.model, "systems": names, "steps": hist["steps"],
                          "wall_s": round(hist.get("wall_s", 0.0), 1),
                          "first_loss": hist["losses"][0] if hist["losses"] else None,
                          "best_val_loss": hist["best_val_loss"], "curve": str(curve)}))
    return 0


def add_training_args(p: argparse.ArgumentParser, *, steps: int | None, lr: float, eval_every: int | None,
                      stride: int = 10, patience: bool = True, window_from: str | None = None) -> None:
    """Window, optimisation and run options shared by pretraining and the protocols
    (:func:`pretrain_config` reads them), ``--device`` included.

    ``window_from``: name the checkpoint whose history/horizon are the defaults (None: 50/100)."""
    if window_from:
        p.add_argument("--history", type=int, default=None, help=f"observed steps Th (default: the {window_from}'s)")
        p.add_argument("--horizon", type=int, default=None, help=f"predicted steps H (default: the {window_from}'s)")
    else:
        p.add_argument("--history", type=int, default=50, help="observed steps Th")
        p.add_argument("--horizon", type=int, default=100, help="predicted steps H")
    p.add_argument("--stride", type=int, default=stride, help="step between window starts")
    if steps is not None:
        p.add_argument("--steps", type=int, default=steps, help="optimiser steps at most")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over DDP ranks)")
    p.add_argument("--lr", type=float, default=lr)
    if eval_every is not None:
        p.add_argument("--eval-every", type=int, default=eval_every, help="steps between validations")
    if patience:
        p.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping")
    if steps is not None:
        p.add_argument("--time-budget-min", type=float, default=None,
                       help="stop after this many minutes of training, summed over --resume'd runs, after a last "
                            "validation; the learning-rate decay follows the time when it is further along than "
                            "the steps (default: no limit)")
        p.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                       help="what --time-budget-min counts: wall-clock, or the process's CPU time over its threads "
                            "(the wall-clock of an idle machine: other jobs on the cores do not spend the budget; "
                            "CPU training only; on a shared machine set OMP_WAIT_POLICY=PASSIVE, as spin-waiting "
                            "threads count too)")
    add_threads(p)
    add_seed(p)
    add_device(p, auto=True)


def add_net_args(p: argparse.ArgumentParser, experts: bool = True) -> None:
    """Network size options (WestWorld's; the baselines use the shared ones)."""
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=2)
    if experts:
        p.add_argument("--experts", type=int, default=4)
    p.add_argument("--expert-hidden", type=int, default=128, help="MLP hidden width (WestWorld: per expert)")
    p.add_argument("--bins", type=int, default=64)
    p.add_argument("--d-state", type=int, default=16, help="WestWorld: selective-SSM state size")
    p.add_argument("--expand", type=int, default=2, help="WestWorld: selective-SSM expansion factor")
    p.add_argument("--target", choices=["absolute", "delta"], default="absolute",
                   help="WestWorld: what the bins encode: the normalised future state over [0, 1] (absolute, the "
                        "seed's) or its change from the last observed state on a symmetric log scale (delta: starts "
                        "at 'no change' and can leave the training range)")
    p.add_argument("--tokens", choices=["channel", "step"], default="channel",
                   help="WestWorld: one token per channel per step (the seed's) or one per step (the channels "
                        "pooled into it; far fewer tokens, for models that must run at control rates)")


def add_train(sub) -> None:
    """``ws train``."""
    t = command(sub, "train", cmd_train, help="train an MLPEnsemble dynamics model",
                description="Fit a probabilistic MLP ensemble (seed 003 App. D.1) on a dataset from ws collect "
                            "(HDF5 or Minari) or a plain D4RL-format HDF5 file (with --env), and write a "
                            "self-contained checkpoint.")
    t.add_argument("--train", type=Path, nargs="+", required=True,
                   help="training dataset(s): HDF5 files or Minari directories from ws collect, or D4RL-format HDF5 "
                        "files; several are joined (same channels)")
    t.add_argument("--val", type=Path, nargs="+", required=True,
                   help="validation dataset(s) (same kinds as --train; several are joined)")
    t.add_argument("--init", type=Path, default=None,
                   help="start from this MLPEnsemble checkpoint's weights and normalisation (fine-tuning, e.g. on "
                        "the data 'ws collect --dynamics CHECKPOINT' gathered where its planner goes, added to its "
                        "own); the architecture flags must match it")
    t.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    t.add_argument("--env", default=None,
                   help=f"environment of the datasets ({environments()}): checks their channels, and reads plain "
                        "D4RL files (no WorldScape metadata) with its channels, state qpos+qvel from infos/qpos, "
                        "infos/qvel, and its MuJoCo model for the successors of episode ends the file does not store")
    t.add_argument("--ensemble-size", type=int, default=5)
    t.add_argument("--elites", type=int, default=3)
    t.add_argument("--hidden", type=int, default=200)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant: --lr throughout; cosine: annealed every gradient step from --lr to --lr-min over "
                        "--epochs (which then cannot change on --resume)")
    t.add_argument("--lr-min", type=float, default=1e-5, help="the cosine schedule's final learning rate")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--epochs", type=int, default=100, help="maximum epochs (early stopping may end sooner)")
    t.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    t.add_argument("--steps-per-epoch", type=int, default=400, help="gradient steps per epoch (0: full pass)")
    t.add_argument("--val-subsample", type=int, default=65536,
                   help="score the members each epoch on a fixed random subset of at most this many validation "
                        "transitions (0: all); the final one-step errors use the whole split")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT.state, the training state every epoch writes (same data, seed and "
                        "settings; --epochs and --patience may change, e.g. to extend a run); the result equals an "
                        "uninterrupted run's")
    t.add_argument("--time-budget-min", type=float, default=None,
                   help="stop after the first epoch that ends past this many minutes, write the best model so far "
                        "to --out, and leave OUT.state for --resume (default: no limit)")
    add_threads(t)
    add_seed(t)
    add_device(t)


def add_pretrain(sub) -> None:
    """``ws pretrain``."""
    pt = command(sub, "pretrain", cmd_pretrain, help="pretrain WestWorld on a corpus (one process or torchrun/DDP)",
                 description="Pretrain the WestWorld trajectory world model (seed 003) on the systems of a corpus, "
                             "held-out systems excluded. Runs on one process, or data-parallel under "
                             "'torchrun --nproc_per_node N $(which ws) pretrain ...' (gloo on CPU, NCCL on CUDA). "
                             "Writes the best checkpoint to --out, the training state to OUT.state (--resume) and, at every "
                             "validation, the learning curve so far to OUT.curve.json (ws eval curves plots it).")
    pt.add_argument("--model", choices=["westworld", "trajworld", "tdm", "mlp_ensemble"], default="westworld",
                    help="WestWorld, or a baseline trained on the same data and protocol (mlp_ensemble: the padded "
                         "multi-system MLPEnsemble of seed 003 App. D.1)")
    pt.add_argument("--max-state-dim", type=int, default=None,
                    help="mlp_ensemble: padded state size (default: the largest pretraining system)")
    pt.add_argument("--max-action-dim", type=int, default=None,
                    help="mlp_ensemble: padded action size (default: the largest pretraining system)")
    pt.add_argument("--corpus", type=Path, required=True, help="corpus directory from ws corpus build")
    pt.add_argument("--systems", default="", help="comma-separated systems (default: all but the held-out ones)")
    pt.add_argument("--out", type=Path, required=True, help="checkpoint path")
    add_training_args(pt, steps=2000, lr=3e-4, eval_every=200)
    add_net_args(pt)
    pt.add_argument("--no-moe", action="store_true", help="ablation: dense SSM block of comparable size")
    pt.add_argument("--no-structure", action="store_true", help="ablation: no structural embedding")
    pt.add_argument("--resume", action="store_true", help="continue from OUT.state")
