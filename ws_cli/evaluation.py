"""``ws eval ...``: the world-model evaluation protocols of seed 003 (zero-shot, few-shot,
routing, scalability, ablation) and the control table (MPPI with each world model)."""

from __future__ import annotations

import math
from pathlib import Path

from .common import add_device, add_threads, command, config_errors, device_of, environments, group, headless_gl, set_threads, \
    split_list
from .mppi import add_controller_args, controller_config
from .worldmodel import (add_net_args, add_training_args, corpus_training_data, corpus_windows, pretrain_config,
                         westworld_config)


def _trajectory_model(path, what: str = "a trajectory world model (WestWorld, TrajWorld or TDM)"):
    """The checkpoint at ``path``, which must be a trajectory world model (ConfigError)."""
    from ws_mppi.config import ConfigError
    from ws_worldmodel.checkpoint import load_checkpoint

    model = load_checkpoint(path)
    if not hasattr(model, "net"):
        raise ConfigError(f"checkpoint {path} is not {what}")
    return model


def _system_model(name: str, ds, env):
    """The MuJoCo model of a system to evaluate: ``--env``'s, a corpus system's, or that of the
    environment the dataset names.

    Raises:
        ConfigError: none of them is known.
    """
    from ws_mppi.config import ConfigError
    from ws_sim.corpus import SYSTEMS, make_system
    from ws_sim.envs import UnknownEnvironmentError, make_env

    if env is not None:
        return env.model
    for key in (name, ds.env):
        if key in SYSTEMS:
            return make_system(key).model
    try:
        return make_env(ds.env).model
    except UnknownEnvironmentError:
        raise ConfigError(f"dataset {name!r} is of environment {ds.env!r}, neither a corpus system nor a "
                          f"WorldScape environment; pass --env") from None


def _name_paths(text: str, option: str, name: str) -> dict[str, str]:
    """``"a=x.pt,b=y.pt"`` -> ``{"a": "x.pt", "b": "y.pt"}``.

    Raises:
        ConfigError: an entry is not NAME=PATH.
    """
    from ws_mppi.config import ConfigError

    out = {}
    for spec in split_list(text):
        key, sep, path = spec.partition("=")
        if not sep or not key or not path:
            raise ConfigError(f"{option} entries are {name}=PATH, got {spec!r}")
        out[key] = path
    return out


def cmd_eval_zero_shot(args) -> int:
    """Zero-shot long-horizon prediction on held-out systems (Table 1)."""
    from ws_sim.corpus import load_datasets
    from ws_sim.envs import make_env
    from ws_worldmodel.protocols import format_table, zero_shot

    headless_gl()
    set_threads(args.threads)
    systems = split_list(args.systems) or None
    models = {}
    for spec in args.checkpoints.split(","):
        name, _, path = spec.rpartition("=")
        models[name or Path(path).stem] = _trajectory_model(path)
    datasets = load_datasets(args.corpus, systems, env=args.env)
    env = make_env(args.env) if args.env else None
    if env is not None:
        for s, ds in datasets.items():
            ds.check_matches(env.state_channels, env.action_channels, f"dataset {s}")
    mj_models = {s: _system_model(s, ds, env) for s, ds in datasets.items()}
    with config_errors():  # a system too large for a padded baseline, or without a full segment
        results = zero_shot(models, datasets, mj_models, args.out,
                            history=args.history, horizon=args.horizon, stride=args.stride,
                            max_windows=args.max_windows, normalisation=args.normalisation)
    print(format_table(results))
    print(f"wrote {Path(args.out) / 'zero_shot.md'}, zero_shot.json and zero_shot_<system>.png")
    return 0


def cmd_eval_few_shot(args) -> int:
    """Fine-tune on a few episodes of an unseen system, against training from scratch (Table 2)."""
    import json

    from ws_sim.corpus import load_system, make_system
    from ws_worldmodel.protocols import few_shot

    headless_gl()
    set_threads(args.threads)
    model = _trajectory_model(args.checkpoint)
    cfg = pretrain_config(args, warmup=min(100, max(1, args.steps // 10)))
    curve = [int(n) for n in split_list(args.train_episodes)]
    with config_errors():
        res = few_shot(model, load_system(args.corpus, args.system), make_system(args.system).model, cfg, args.out,
                       train_episodes=curve, val_episodes=args.val_episodes, test_episodes=args.test_episodes,
                       seed=args.seed, progress=True, peft_blocks=args.peft_blocks, device=device_of(args))
    print((Path(args.out) / "few_shot.md").read_text(), end="")
    print(json.dumps({str(k): v for k, v in res.items()}))
    return 0


def cmd_eval_routing(args) -> int:
    """Plot WestWorld's mean Sys-MoE routing weights per system (Fig. 4)."""
    from ws_sim.corpus import load_system, make_system
    from ws_worldmodel.pretrain import system_windows
    from ws_worldmodel.protocols import routing

    headless_gl()
    model = _trajectory_model(args.checkpoint, "a trajectory world model")
    names = split_list(args.systems) or list(model.systems)
    windows = {name: system_windows(load_system(args.corpus, name), make_system(name).model,
                                    model.history + model.horizon, args.stride, 0.1)[1] for name in names}
    with config_errors(f"checkpoint {args.checkpoint}: "):
        res = routing(model, windows, args.out, model.history)
    for name, blocks in res.items():
        print(f"{name:<28} " + "  ".join("[" + " ".join(f"{w:.2f}" for w in b) + "]" for b in blocks))
    print(f"wrote {Path(args.out) / 'routing.png'} and routing.json")
    return 0


def cmd_eval_curves(args) -> int:
    """Plot pretraining runs' validation MAE against wall-clock (their ``CHECKPOINT.curve.json``)."""
    import json

    from ws_mppi.config import ConfigError
    from ws_worldmodel.protocols import learning_curves

    runs = {}
    for spec in split_list(args.runs):
        label, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--runs takes LABEL=FILE.curve.json pairs, got {spec!r}")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path} does not exist (ws pretrain writes CHECKPOINT.curve.json beside its checkpoint)")
        try:
            runs[label] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not a curve file: {e}") from e
    with config_errors():
        summary = learning_curves(runs, args.out)
    for label, row in summary.items():
        if isinstance(row, dict):
            print(f"{label:<24} best MAE {row['best_val_mae']:.4f} at {row['at_time_s'] / 60:.1f} min, final "
                  f"{row['final_val_mae']:.4f} after {row['time_s'] / 60:.1f} min ({row['steps']} steps, "
                  f"{row['clock']} clock)")
    if "hold_last_state" in summary:
        print(f"{'hold the last state':<24} MAE {summary['hold_last_state']:.4f}")
    print(f"wrote {Path(args.out) / 'curves.png'} and curves.json")
    return 0


def cmd_eval_scalability(args) -> int:
    """Error against the number of pretraining environments, WestWorld and TrajWorld (Fig. 3)."""
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT, SYSTEMS
    from ws_worldmodel.protocols import scalability
    from ws_worldmodel.trajworld import TrajWorldConfig

    headless_gl()
    set_threads(args.threads)
    held = set(HELD_OUT_ZERO_SHOT + HELD_OUT_FEW_SHOT)
    order = [s for s in (split_list(args.systems) or SYSTEMS) if s not in held]
    cfg = pretrain_config(args)
    present = [n for n in order if (Path(args.corpus) / n).is_dir()]
    train, val = corpus_windows(Path(args.corpus), present, cfg)
    cfgs = {"westworld": westworld_config(args),
            "trajworld": TrajWorldConfig(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, bins=args.bins,
                                         mlp_hidden=args.expert_hidden)}
    ns = [int(n) for n in split_list(args.ns)]
    with config_errors():
        scalability(train, val, cfgs, cfg, ns, args.steps_per_env, args.out, seed=args.seed, progress=True,
                    device=device_of(args))
    print((Path(args.out) / "scalability.md").read_text(), end="")
    print(f"environments in order: {[t.name for t in train][:max(ns)]}")
    return 0


def cmd_eval_ablation(args) -> int:
    """Pretrain WestWorld and its two ablations on the same data, then compare them zero-shot (Table 4)."""
    import dataclasses
    import json
    import tempfile

    from ws_sim.corpus import HELD_OUT_ZERO_SHOT, load_system, make_system
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import pretrain
    from ws_worldmodel.protocols import format_table, zero_shot

    headless_gl()
    set_threads(args.threads)
    cfg, train, val = corpus_training_data(args)
    full = westworld_config(args)
    variants = {"WestWorld": full, "w/o Sys-MoE": dataclasses.replace(full, use_moe=False),
                "w/o structure": dataclasses.replace(full, use_structure=False)}
    eval_systems = split_list(args.eval_systems or ",".join(HELD_OUT_ZERO_SHOT))
    models, params = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mcfg in variants.items():
            path = Path(tmp) / f"{len(models)}.pt"
            pretrain(train, val, mcfg, cfg, path, seed=args.seed, device=device_of(args))
            models[label] = load_checkpoint(path)
            params[label] = sum(p.numel() for p in models[label].net.parameters())
    res = zero_shot(models, {s: load_system(args.corpus, s) for s in eval_systems},
                    {s: make_system(s).model for s in eval_systems}, args.out, history=cfg.history,
                    horizon=cfg.horizon, stride=cfg.history + cfg.horizon, normalisation=args.normalisation)
    (Path(args.out) / "ablation.json").write_text(json.dumps({"parameters": params, "results": res}, indent=2))
    table = format_table(res)
    (Path(args.out) / "ablation.md").write_text(table + "\n")
    print(table)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    return 0


def _add_control_data(p, train_help: str, val_help: str) -> None:
    """``--env``, ``--train`` and ``--val``: one system's control dataset (``ws collect``)."""
    p.add_argument("--env", default="hopper", help=f"environment: {environments()}")
    p.add_argument("--train", type=Path, required=True, help=train_help)
    p.add_argument("--val", type=Path, required=True, help=val_help)


def _control_data(args):
    """``(env, train, val)`` from :func:`_add_control_data`'s flags, each split checked against the environment's
    channels (a mismatch is an error naming the file)."""
    from ws_sim.dataset import read_dataset
    from ws_sim.envs import make_env

    env = make_env(args.env)
    train, val = read_dataset(args.train), read_dataset(args.val)
    for name, ds in (("train", train), ("val", val)):
        ds.check_matches(env.state_channels, env.action_channels, f"--{name} dataset {getattr(args, name)}")
    return env, train, val


def cmd_eval_control(args) -> int:
    """MPPI with each world model, fine-tuned and from scratch, on the same seeds (Table 3)."""
    from ws_mppi.config import ConfigError
    from ws_mppi.control_table import run_control_table
    from ws_worldmodel.checkpoint import load_checkpoint

    headless_gl()
    nthread = set_threads(args.threads)
    ccfg = controller_config(args)
    pretrained, extra = _name_paths(args.pretrained, "--pretrained", "KIND"), _name_paths(args.extra, "--extra", "LABEL")
    if not pretrained and not extra:
        raise ConfigError("nothing to evaluate: give --pretrained and/or --extra")
    if args.time_budget_min is not None and not args.time_budget_min > 0:
        raise ConfigError(f"--time-budget-min must be > 0 minutes, got {args.time_budget_min}")
    history = args.history
    if history is None:
        history = load_checkpoint(next(iter(pretrained.values()))).history if pretrained else 10
    action_effect = None
    if args.action_effect_weight is not None:
        if not (args.action_effect_weight >= 0 and math.isfinite(args.action_effect_weight)):
            raise ConfigError(f"--action-effect-weight must be a finite number >= 0, got {args.action_effect_weight}")
        if not (args.action_effect_noise > 0 and math.isfinite(args.action_effect_noise)):
            raise ConfigError(f"--action-effect-noise must be a positive number of half control ranges, "
                              f"got {args.action_effect_noise}")
        if "westworld" not in pretrained:
            raise ConfigError("--action-effect-weight trains WestWorld: give --pretrained westworld=PATH")
        action_effect = {"weight": args.action_effect_weight, "noise": args.action_effect_noise}
    env, train, val = _control_data(args)
    tcfg = pretrain_config(args, history=history, horizon=ccfg.mppi.horizon, warmup=min(100, max(1, args.steps // 10)),
                           val_fraction=0.0)
    with config_errors():
        run_control_table(args.env, train, val, pretrained, args.out, tcfg, ccfg,
                          variants=split_list(args.variants),
                          seeds=range(args.seed, args.seed + args.episodes), max_steps=args.max_steps,
                          extra=extra, nthread=nthread, seed=args.train_seed, device=args.device,
                          terminate_when_unhealthy=not args.no_termination, action_effect=action_effect)
    print((Path(args.out) / "table3.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'table3.md'}, table3.json and table3.png")
    return 0


def cmd_eval_open_loop(args) -> int:
    """The open-loop error at every step ahead of dynamics checkpoints on one system's control data."""
    from ws_mppi.config import ConfigError
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.protocols import open_loop

    set_threads(args.threads)
    named = _name_paths(args.checkpoints, "--checkpoints", "LABEL")
    if not named:
        raise ConfigError("nothing to score: give --checkpoints LABEL=PATH,...")
    for flag in ("history", "horizon", "stride", "max_windows"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not (args.action_noise >= 0 and math.isfinite(args.action_noise)):
        raise ConfigError(f"--action-noise must be a finite number >= 0, got {args.action_noise}")
    models = {label: load_checkpoint(path) for label, path in named.items()}
    env, train, val = _control_data(args)
    with config_errors():
        open_loop(models, train, val, env.model, args.out, history=args.history, horizon=args.horizon,
                  stride=args.stride, max_windows=args.max_windows, action_noise=args.action_noise,
                  frame_skip=env.frame_skip, seed=args.seed)
    print((Path(args.out) / "open_loop.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'open_loop.md'}, open_loop.json and open_loop.png")
    return 0


def cmd_eval_one_step(args) -> int:
    """One-step errors of MLPEnsemble checkpoints on datasets, as JSON."""
    import json

    from ws_sim.dataset import read_dataset
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.mlp_ensemble import MLPEnsemble
    from ws_worldmodel.train import one_step_errors

    set_threads(args.threads)
    models = {}
    for path in args.checkpoint:
        model = load_checkpoint(path)
        if not isinstance(model, MLPEnsemble):
            raise SystemExit(f"ws eval one-step: {path} is a {type(model).__name__}, not an MLPEnsemble checkpoint")
        models[str(path)] = model
    rows = []
    for data in args.data:
        ds = read_dataset(data)
        for path, model in models.items():
            ds.check_matches(model.state_channels, model.action_channels, f"dataset {data}")
            err = one_step_errors(model, ds)
            rows.append({"checkpoint": path, "data": str(data), "transitions": len(ds),
                         "model_mse": round(err["model_mse"], 5), "unchanged_state_mse": round(err["unchanged_mse"], 5)})
            print(json.dumps(rows[-1]))
    return 0


def add_eval(sub) -> None:
    """``ws eval zero-shot|few-shot|routing|scalability|ablation|control``."""
    esub = group(sub, "eval", help="world-model evaluation protocols (seed 003)",
                 description="Evaluation protocols of seed 003 that write tables and plots.", metavar="PROTOCOL")
    zs = command(esub, "zero-shot", cmd_eval_zero_shot,
                 help="Table 1: predict 100 steps from 50 on systems unseen in pretraining",
                 description="Zero-shot long-horizon prediction (seed 003 Table 1, App. D.2): every episode of "
                             "each held-out system is cut into history+horizon segments; each model predicts "
                             "the horizon from the history and the actions; MAE/MSE in normalised units (each "
                             "system min-max normalised by its own data: --normalisation). Writes zero_shot.md, "
                             "zero_shot.json and a plot per system.")
    zs.add_argument("--corpus", type=Path, required=True,
                    help="the data to evaluate on: a corpus folder from ws corpus build (<system>/shard_NNN.hdf5), "
                         "a folder of .hdf5/.h5 trajectory files (one system per file, named by its stem), or one "
                         "such file; plain D4RL-format files need --env")
    zs.add_argument("--env", default=None,
                    help=f"environment of the data ({environments()}): the channels of plain D4RL files (state "
                         "qpos+qvel from infos/qpos, infos/qvel) and the MuJoCo model for the structural embedding "
                         "and the successors of episode ends a D4RL file does not store; data with metadata is "
                         "checked against it. Without it each dataset's own system or environment gives the model")
    zs.add_argument("--checkpoints", required=True,
                    help="comma-separated [name=]path of WestWorld/TrajWorld/TDM checkpoints from ws pretrain")
    zs.add_argument("--systems", default="",
                    help="corpus systems to evaluate (empty: gym-hopper,gym-walker2d), or file stems in a folder "
                         "of files (empty: all of them)")
    zs.add_argument("--history", type=int, default=50)
    zs.add_argument("--horizon", type=int, default=100)
    zs.add_argument("--stride", type=int, default=150, help="step between segment starts")
    zs.add_argument("--max-windows", type=int, default=64, help="segments per system at most")
    zs.add_argument("--normalisation", choices=["history", "dataset"], default="history",
                    help="state ranges of each held-out system: history (the segments' observed histories only, never a "
                         "predicted step) or dataset (all of its states, targets included: the seed's protocol, and "
                         "this project's before 2026-12-05)")
    zs.add_argument("--out", type=Path, required=True, help="report directory")
    add_threads(zs, help=None)

    fs = command(esub, "few-shot", cmd_eval_few_shot,
                 help="Table 2 / Fig. 6: fine-tune on a few episodes of an unseen system",
                 description="Few-shot adaptation (seed 003 Table 2, App. C.3, E): fine-tune the checkpoint on "
                             "N episodes of an unseen system (early stopping on validation episodes), test on "
                             "held-back episodes, and do the same from random weights. Writes few_shot.md, "
                             "few_shot.json and few_shot_curve.png.")
    fs.add_argument("--corpus", type=Path, required=True)
    fs.add_argument("--checkpoint", type=Path, required=True, help="pretrained checkpoint from ws pretrain")
    fs.add_argument("--system", default="gym-pusher", help="the unseen system")
    fs.add_argument("--train-episodes", default="10", help="comma-separated fine-tuning set sizes (a curve)")
    fs.add_argument("--val-episodes", type=int, default=5)
    fs.add_argument("--test-episodes", type=int, default=5)
    add_training_args(fs, steps=500, lr=1e-4, eval_every=50)
    fs.add_argument("--peft-blocks", type=int, default=None,
                    help="Table 11: fine-tune only the last K Sys-MoE blocks, the queries and the head")
    fs.add_argument("--out", type=Path, required=True)

    ro = command(esub, "routing", cmd_eval_routing, help="Fig. 4: mean Sys-MoE routing weights per system",
                 description="Average WestWorld's routing weights over validation windows of each system and "
                             "plot them per block (seed 003 Fig. 4).")
    ro.add_argument("--corpus", type=Path, required=True)
    ro.add_argument("--checkpoint", type=Path, required=True)
    ro.add_argument("--systems", default="", help="systems (default: those the checkpoint was trained on)")
    ro.add_argument("--stride", type=int, default=50)
    ro.add_argument("--out", type=Path, required=True)

    cu = command(esub, "curves", cmd_eval_curves, help="learning curves: validation MAE against training wall-clock",
                 description="Plot the validation MAE (normalised, the pretraining systems' validation windows) of "
                             "pretraining runs against their training wall-clock, from the CHECKPOINT.curve.json "
                             "files ws pretrain writes, with holding the last state as a dashed line.")
    cu.add_argument("--runs", required=True, help="comma-separated LABEL=CHECKPOINT.curve.json")
    cu.add_argument("--out", type=Path, required=True, help="folder for curves.png and curves.json")

    sc = command(esub, "scalability", cmd_eval_scalability,
                 help="Fig. 3: error against the number of pretraining environments",
                 description="Pretrain WestWorld and TrajWorld on the first N environments of the corpus "
                             "(in ws_sim.corpus.SYSTEMS order, or --systems) with a fixed step budget per "
                             "environment; report validation MAE/MSE averaged over those environments.")
    sc.add_argument("--corpus", type=Path, required=True)
    sc.add_argument("--ns", default="1,2,5,10,20", help="environment counts N")
    sc.add_argument("--systems", default="", help="environment order (default: the corpus order of SYSTEMS)")
    sc.add_argument("--steps-per-env", type=int, default=200, help="optimiser steps per environment")
    add_training_args(sc, steps=None, lr=3e-4, eval_every=None, patience=False)
    add_net_args(sc, experts=False)
    sc.add_argument("--out", type=Path, required=True)

    ab = command(esub, "ablation", cmd_eval_ablation,
                 help="Table 4: WestWorld without Sys-MoE / without the structural embedding",
                 description="Pretrain WestWorld, its dense ablation (one MLP of n_experts x expert_hidden "
                             "units instead of the routed experts: a comparable parameter count) and the "
                             "ablation without structural embedding on the same data, then run the zero-shot "
                             "protocol on the held-out systems. Writes ablation.md/json and the zero-shot plots.")
    ab.add_argument("--corpus", type=Path, required=True)
    ab.add_argument("--systems", default="", help="pretraining systems (default: all but the held-out ones)")
    ab.add_argument("--eval-systems", default="", help="zero-shot systems (default: gym-hopper,gym-walker2d)")
    ab.add_argument("--normalisation", choices=["history", "dataset"], default="history",
                    help="state ranges of each held-out system: history (the segments' observed histories only, never a "
                    "predicted step) or dataset (all of its states, targets included: the seed's protocol, and "
                    "this project's before 2026-12-05)")
    add_training_args(ab, steps=2000, lr=3e-4, eval_every=200, patience=False)
    add_net_args(ab)
    ab.add_argument("--out", type=Path, required=True)

    os_ = command(esub, "one-step", cmd_eval_one_step,
                  help="one-step error of MLPEnsemble checkpoints on datasets (JSON lines)",
                  description="The one-step prediction MSE of each checkpoint on each dataset, in the model's "
                              "per-channel standardised change space (as 'ws train' prints it), beside holding "
                              "the state unchanged: e.g. a model's error on its oracle data against its error on "
                              "the data its own planner visits ('ws collect --dynamics').")
    os_.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="MLPEnsemble checkpoints (ws train)")
    os_.add_argument("--data", type=Path, nargs="+", required=True, help="datasets (ws collect; HDF5 or Minari)")
    add_threads(os_)

    ol = command(esub, "open-loop", cmd_eval_open_loop,
                 help="error at every step ahead of dynamics checkpoints on a control dataset (table, JSON, plot)",
                 description="Each checkpoint predicts the next --horizon states of the same validation windows "
                             "from --history observed states and the actions, without seeing the states it "
                             "predicts: a one-step MLPEnsemble (ws train) rolled out on its mean, a trajectory "
                             "model (ws pretrain, ws eval control's models/) in one call. The MAE at each step "
                             "ahead is in fractions of each channel's training range (the units ws eval control "
                             "trains and validates in), beside holding the last observed state. Writes "
                             "open_loop.md, open_loop.json and open_loop.png (MAE against steps ahead; with "
                             "--action-noise, also the action-effect error against steps ahead).")
    _add_control_data(ol, "control dataset (ws collect): the channel ranges", "its validation split: the windows scored")
    ol.add_argument("--checkpoints", required=True,
                    help="comma-separated LABEL=PATH of MLPEnsemble (ws train) and trajectory-model checkpoints "
                         "trained on this system")
    ol.add_argument("--history", type=int, default=10, help="observed steps per window (at least every model's)")
    ol.add_argument("--horizon", type=int, default=40, help="steps predicted")
    ol.add_argument("--stride", type=int, default=5, help="step between window starts")
    ol.add_argument("--max-windows", type=int, default=256, help="windows scored, spread evenly over all")
    ol.add_argument("--action-noise", type=float, default=0.0,
                    help="also replay every window with its future actions perturbed by Gaussian noise of this "
                         "many half control ranges, the true futures from MuJoCo, and report each model's "
                         "action-effect error: how far its predicted change from the perturbation is from the "
                         "true change, over the true change (0 exact, 1 for a model that ignores its actions). "
                         "0 (default): off")
    ol.add_argument("--seed", type=int, default=0, help="random seed of the perturbations (--action-noise)")
    ol.add_argument("--out", type=Path, required=True, help="report directory")
    add_threads(ol)

    ct = command(esub, "control", cmd_eval_control,
                 help="Table 3: MPPI with each world model, pretrained and from scratch",
                 description="Seed 003 Table 3 analogue for one environment: fine-tune each pretrained "
                             "checkpoint on the control dataset and train the same model from scratch, run "
                             "MPPI with each (and oracle MPPI, the upper bound) on the same seeds, and "
                             "write OUT/table3.md, table3.json and table3.png combining every environment "
                             "run into OUT. Trained models and episodes are cached: rerunning resumes.")
    _add_control_data(ct, "control dataset (ws collect --history TH)", "its validation split")
    ct.add_argument("--pretrained", default="",
                    help="comma-separated KIND=PATH of ws pretrain checkpoints (kinds: westworld, trajworld, tdm, "
                         "mlp_ensemble)")
    ct.add_argument("--variants", default="pretrained,scratch", help="pretrained (fine-tuned) and/or scratch")
    ct.add_argument("--extra", default="", help="comma-separated LABEL=PATH of checkpoints run as they are")
    ct.add_argument("--episodes", type=int, default=5, help="episodes (seeds) per controller")
    ct.add_argument("--seed", type=int, default=100, help="first episode seed")
    ct.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    ct.add_argument("--history", type=int, default=None, help="history steps Th (default: the checkpoints')")
    ct.add_argument("--steps", type=int, default=500, help="training steps per model")
    ct.add_argument("--batch-size", type=int, default=16)
    ct.add_argument("--lr", type=float, default=5e-4)
    ct.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    ct.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    ct.add_argument("--stride", type=int, default=5, help="step between window starts")
    ct.add_argument("--train-seed", type=int, default=0, help="seed of weights and batches")
    ct.add_argument("--out", type=Path, required=True, help="table directory (shared by environments)")
    ct.add_argument("--time-budget-min", type=float, default=None,
                    help="stop each model's training after this many minutes (summed over interrupted and rerun "
                         "runs: a rerun into the same --out resumes a model's training from <model>.pt.state), "
                         "after a last validation; the learning-rate decay follows the time when it is further "
                         "along than --steps (default: no limit)")
    ct.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                    help="what --time-budget-min counts: wall-clock, or the process's CPU time over its threads "
                         "(other jobs on the cores do not spend the budget)")
    ct.add_argument("--no-termination", action="store_true",
                    help="Hopper/Walker2d: episodes go on after a fall (seed 003's protocol for its Table 3), in the "
                         "table's column <env>-no-termination; the models of the <env> column are reused")
    ct.add_argument("--action-effect-weight", type=float, default=None,
                    help="train WestWorlds on every window and a MuJoCo twin of it with the future actions "
                         "perturbed, plus this weight times their action-effect error (the measure of 'ws eval "
                         "open-loop --action-noise'; ws_worldmodel.action_effect). 0: the twins' cross-entropy "
                         "only. Default: off, the model's own loss (seed 003's). The data's states must be "
                         "qpos, qvel")
    ct.add_argument("--action-effect-noise", type=float, default=0.3,
                    help="the twins' perturbation: Gaussian, in half control ranges")
    add_device(ct)
    add_controller_args(ct)
