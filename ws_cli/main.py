"""The ``ws`` command line: data, training and closed-loop evaluation.

    ws collect   oracle-MPPI datasets (seed 003, Appendix C.5)
    ws train     fit a dynamics model (MLPEnsemble) on a dataset
    ws mppi run  MPPI closed loop in Gymnasium with oracle, learned or zero dynamics
    ws corpus build  the multi-system pretraining corpus (dm_control + Gymnasium)
    ws pretrain  pretrain WestWorld (or the TrajWorld/TDM baselines) on a corpus
    ws eval zero-shot  seed 003's Table 1 protocol on held-out systems
    ws eval few-shot   seed 003's Table 2 / Fig. 6 protocol on an unseen system
    ws eval scalability  seed 003's Fig. 3: error against the number of pretraining environments
    ws eval routing    seed 003's Fig. 4: routing weights per system
    ws eval ablation   seed 003's Table 4: without Sys-MoE, without the structural embedding
    ws policy ...      the video-depth-action policy: collect, train, eval
    ws teleop          drive the PiPER from the keyboard (publishes teleop/joy for the teleop node)
    ws hitl ...        human-in-the-loop recordings: convert, recover
    ws expert ...      Hopper/Walker2d expert policies (stable-baselines3): train, export, eval

Every subcommand has ``--help``; every one where randomness enters takes ``--seed``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("ws")


def _headless_gl() -> None:
    """Offscreen MuJoCo rendering on a machine without a display (OSMesa on CPU)."""
    if not os.environ.get("DISPLAY") and "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "osmesa"
    if os.environ.get("MUJOCO_GL") == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def _add_controller_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help="controller YAML (MPPI horizon/samples/temperature/noise_sigma, termination_penalty); "
                        "default: the environment's built-in config (see config/mppi_<env>.yaml)")
    p.add_argument("--horizon", type=int, default=None, help="override MPPI horizon H (steps)")
    p.add_argument("--samples", type=int, default=None, help="override MPPI samples K")
    p.add_argument("--temperature", type=float, default=None, help="override MPPI temperature lambda")
    p.add_argument("--reference", type=Path, default=None,
                   help="track this reference trajectory with the expert-reference cost term of seed 003 eqs. "
                        "(21)/(28): an .npz with 'states' (T, nq+nv) (a states_*.npz of ws mppi run, a shipped "
                        "expert's ws_mppi/experts/<env>/reference.npz) or with 'qpos' and 'qvel', or a D4RL-format "
                        "HDF5 episode (infos/qpos, infos/qvel; the first episode)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and oracle rollouts (default: all)")


def _controller_config(args):
    from ws_mppi.config import ConfigError, default_config, load_config

    cfg = load_config(args.config) if args.config else default_config(args.env)
    if args.horizon is not None:
        cfg.mppi.horizon = args.horizon
    if args.samples is not None:
        cfg.mppi.samples = args.samples
    if args.temperature is not None:
        cfg.mppi.temperature = args.temperature
    if args.reference is not None:
        cfg.reference = str(args.reference)
    try:
        cfg.mppi.__post_init__()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return cfg


def _set_threads(n: int | None) -> int:
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cmd_collect(args) -> int:
    from ws_mppi.collect import CollectConfig, collect
    from ws_sim.dataset import write_dataset
    from ws_sim.envs import make_env

    env = make_env(args.env, max_episode_steps=args.max_steps)
    nthread = _set_threads(args.threads)
    ccfg = CollectConfig(train_episodes=args.train_episodes, full_episodes=args.full_episodes,
                         val_episodes=args.val_episodes, keep_train=args.keep_train, keep_val=args.keep_val,
                         max_steps=args.max_steps, seed=args.seed, history=args.history)
    train, val, stats = collect(env, ccfg, _controller_config(args), nthread=nthread)
    suffix = ".hdf5" if args.format == "hdf5" else ""
    out = Path(args.out)
    tp = write_dataset(train, out / f"train{suffix}", args.format)
    vp = write_dataset(val, out / f"val{suffix}", args.format)
    print(f"wrote {tp} ({len(train)} transitions in {train.num_segments} segments)")
    print(f"wrote {vp} ({len(val)} transitions in {val.num_segments} segments)")
    print(f"oracle episode returns: {[round(r, 1) for r in stats['oracle_returns_train'] + stats['oracle_returns_full']]}")
    return 0


def cmd_train(args) -> int:
    import json

    from ws_sim.dataset import read_dataset
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import save_checkpoint
    from ws_worldmodel.mlp_ensemble import MLPEnsembleConfig
    from ws_worldmodel.train import train_mlp_ensemble

    _set_threads(args.threads)
    # --env names the environment of plain D4RL files (channels, missing successors) and checks the rest
    train = read_dataset(args.train, env=args.env)
    val = read_dataset(args.val, env=args.env)
    if args.env:
        env = make_env(args.env)
        train.check_matches(env.state_channels, env.action_channels, f"dataset {args.train}")
        val.check_matches(env.state_channels, env.action_channels, f"dataset {args.val}")
    cfg = MLPEnsembleConfig(ensemble_size=args.ensemble_size, elites=args.elites, hidden=args.hidden,
                            layers=args.layers, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                            patience=args.patience, max_steps_per_epoch=args.steps_per_epoch)
    model, hist = train_mlp_ensemble(train, val, cfg, seed=args.seed)
    info = {"train": str(args.train), "val": str(args.val), "seed": args.seed, "env": train.env, **hist}
    save_checkpoint(model, args.out, info)
    err = hist["val_one_step"]
    print(json.dumps({"checkpoint": str(args.out), "val_one_step_mse": round(err["model_mse"], 5),
                      "unchanged_state_mse": round(err["unchanged_mse"], 5), "epochs": len(hist["epochs"])}))
    return 0


def cmd_corpus_build(args) -> int:
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT, SYSTEMS, build_corpus

    _headless_gl()
    systems = list(SYSTEMS) if args.systems == "all" else [s for s in args.systems.split(",") if s]
    manifest = build_corpus(args.out, systems, args.episodes, seed=args.seed, episodes_per_shard=args.episodes_per_shard,
                            workers=args.workers, behaviours=tuple(args.behaviours.split(",")), steps=args.steps,
                            mppi_factory="ws_mppi.collect:corpus_mppi_policy")
    print(f"corpus {args.out}: {len(manifest['systems'])} systems; held out of pretraining: "
          f"zero-shot {list(HELD_OUT_ZERO_SHOT)}, few-shot {list(HELD_OUT_FEW_SHOT)}")
    return 0


def _corpus_windows(corpus: Path, names: list[str], cfg) -> tuple[list, list]:
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


def _pretraining_systems(corpus: Path, systems: str) -> list[str]:
    """The named systems, or every corpus system but the held-out ones.

    Raises:
        FileNotFoundError: no corpus directory, or no system in it.
    """
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT

    corpus = Path(corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus directory {corpus} does not exist (make one with 'ws corpus build')")
    if systems:
        names = [s for s in systems.split(",") if s]
    else:
        held = set(HELD_OUT_ZERO_SHOT + HELD_OUT_FEW_SHOT)
        names = sorted(p.name for p in corpus.iterdir() if p.is_dir() and p.name not in held)
    if not names:
        raise FileNotFoundError(f"corpus {corpus} holds no system to pretrain on")
    return names


def cmd_pretrain(args) -> int:
    import json

    from ws_worldmodel.pretrain import PretrainConfig, pretrain
    from ws_worldmodel.tdm import TDMConfig
    from ws_worldmodel.trajworld import TrajWorldConfig
    from ws_worldmodel.westworld import WestWorldConfig

    _headless_gl()
    _set_threads(args.threads)
    corpus = Path(args.corpus)
    names = _pretraining_systems(corpus, args.systems)
    cfg = PretrainConfig(history=args.history, horizon=args.horizon, batch_size=args.batch_size, steps=args.steps,
                         lr=args.lr, eval_every=args.eval_every, stride=args.stride, patience=args.patience)
    if args.model == "westworld":
        mcfg = WestWorldConfig(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, n_experts=args.experts,
                               expert_hidden=args.expert_hidden, bins=args.bins, d_state=args.d_state,
                               expand=args.expand, use_moe=not args.no_moe,
                               use_structure=not args.no_structure)
    elif args.model == "mlp_ensemble":
        mcfg = None  # sized from the data below
    else:
        cls = TrajWorldConfig if args.model == "trajworld" else TDMConfig
        mcfg = cls(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, bins=args.bins,
                   mlp_hidden=args.expert_hidden)
    train, val = _corpus_windows(corpus, names, cfg)
    names = [t.name for t in train]
    if mcfg is None:
        from ws_worldmodel.mlp_ensemble import PaddedMLPEnsembleConfig

        mcfg = PaddedMLPEnsembleConfig(max_state_dim=args.max_state_dim or max(t.states.shape[2] for t in train),
                                       max_action_dim=args.max_action_dim or max(t.actions.shape[2] for t in train))
    hist = pretrain(train, val, mcfg, cfg, args.out, seed=args.seed, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"checkpoint": str(args.out), "model": args.model, "systems": names, "steps": hist["steps"],
                          "first_loss": hist["losses"][0] if hist["losses"] else None,
                          "best_val_loss": hist["best_val_loss"]}))
    return 0


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


def cmd_eval_zero_shot(args) -> int:
    from ws_mppi.config import ConfigError
    from ws_sim.corpus import load_datasets
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.protocols import format_table, zero_shot

    _headless_gl()
    _set_threads(args.threads)
    systems = [s for s in args.systems.split(",") if s] or None
    models = {}
    for spec in args.checkpoints.split(","):
        name, _, path = spec.rpartition("=")
        model = load_checkpoint(path)
        if not hasattr(model, "net"):
            raise ConfigError(f"checkpoint {path} is not a trajectory world model (WestWorld, TrajWorld or TDM)")
        models[name or Path(path).stem] = model
    datasets = load_datasets(args.corpus, systems, env=args.env)
    env = make_env(args.env) if args.env else None
    if env is not None:
        for s, ds in datasets.items():
            ds.check_matches(env.state_channels, env.action_channels, f"dataset {s}")
    mj_models = {s: _system_model(s, ds, env) for s, ds in datasets.items()}
    try:
        results = zero_shot(models, datasets, mj_models, args.out,
                            history=args.history, horizon=args.horizon, stride=args.stride,
                            max_windows=args.max_windows)
    except ValueError as e:  # a system too large for a padded baseline, or without a full segment
        raise ConfigError(str(e)) from e
    print(format_table(results))
    print(f"wrote {Path(args.out) / 'zero_shot.md'}, zero_shot.json and zero_shot_<system>.png")
    return 0


def cmd_eval_few_shot(args) -> int:
    import json

    from ws_mppi.config import ConfigError
    from ws_sim.corpus import load_system, make_system
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import PretrainConfig
    from ws_worldmodel.protocols import few_shot

    _headless_gl()
    _set_threads(args.threads)
    model = load_checkpoint(args.checkpoint)
    if not hasattr(model, "net"):
        raise ConfigError(f"checkpoint {args.checkpoint} is not a trajectory world model (WestWorld, TrajWorld or TDM)")
    cfg = PretrainConfig(history=args.history, horizon=args.horizon, batch_size=args.batch_size, steps=args.steps,
                         lr=args.lr, warmup=min(100, max(1, args.steps // 10)), eval_every=args.eval_every,
                         stride=args.stride, patience=args.patience)
    curve = [int(n) for n in args.train_episodes.split(",") if n]
    try:
        res = few_shot(model, load_system(args.corpus, args.system), make_system(args.system).model, cfg, args.out,
                       train_episodes=curve, val_episodes=args.val_episodes, test_episodes=args.test_episodes,
                       seed=args.seed, progress=True, peft_blocks=args.peft_blocks)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    print((Path(args.out) / "few_shot.md").read_text(), end="")
    print(json.dumps({str(k): v for k, v in res.items()}))
    return 0


def cmd_eval_routing(args) -> int:
    from ws_mppi.config import ConfigError
    from ws_sim.corpus import load_system, make_system
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import system_windows
    from ws_worldmodel.protocols import routing

    _headless_gl()
    model = load_checkpoint(args.checkpoint)
    if not hasattr(model, "net"):
        raise ConfigError(f"checkpoint {args.checkpoint} is not a trajectory world model")
    names = [s for s in args.systems.split(",") if s] or list(model.systems)
    windows = {name: system_windows(load_system(args.corpus, name), make_system(name).model,
                                    model.history + model.horizon, args.stride, 0.1)[1] for name in names}
    try:
        res = routing(model, windows, args.out, model.history)
    except ValueError as e:
        raise ConfigError(f"checkpoint {args.checkpoint}: {e}") from e
    for name, blocks in res.items():
        print(f"{name:<28} " + "  ".join("[" + " ".join(f"{w:.2f}" for w in b) + "]" for b in blocks))
    print(f"wrote {Path(args.out) / 'routing.png'} and routing.json")
    return 0


def cmd_eval_scalability(args) -> int:
    from ws_mppi.config import ConfigError
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT, SYSTEMS
    from ws_worldmodel.pretrain import PretrainConfig
    from ws_worldmodel.protocols import scalability
    from ws_worldmodel.trajworld import TrajWorldConfig
    from ws_worldmodel.westworld import WestWorldConfig

    _headless_gl()
    _set_threads(args.threads)
    held = set(HELD_OUT_ZERO_SHOT + HELD_OUT_FEW_SHOT)
    order = [s for s in (args.systems.split(",") if args.systems else SYSTEMS) if s and s not in held]
    cfg = PretrainConfig(history=args.history, horizon=args.horizon, batch_size=args.batch_size, lr=args.lr,
                         stride=args.stride)
    present = [n for n in order if (Path(args.corpus) / n).is_dir()]
    train, val = _corpus_windows(Path(args.corpus), present, cfg)
    common = dict(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, bins=args.bins)
    cfgs = {"westworld": WestWorldConfig(**common, expert_hidden=args.expert_hidden, d_state=args.d_state,
                                         expand=args.expand),
            "trajworld": TrajWorldConfig(**common, mlp_hidden=args.expert_hidden)}
    ns = [int(n) for n in args.ns.split(",") if n]
    try:
        scalability(train, val, cfgs, cfg, ns, args.steps_per_env, args.out, seed=args.seed, progress=True)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    print((Path(args.out) / "scalability.md").read_text(), end="")
    print(f"environments in order: {[t.name for t in train][:max(ns)]}")
    return 0


def cmd_eval_ablation(args) -> int:
    import dataclasses
    import json
    import tempfile

    from ws_sim.corpus import HELD_OUT_ZERO_SHOT, load_system, make_system
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import PretrainConfig, pretrain
    from ws_worldmodel.protocols import format_table, zero_shot
    from ws_worldmodel.westworld import WestWorldConfig

    _headless_gl()
    _set_threads(args.threads)
    corpus = Path(args.corpus)
    names = _pretraining_systems(corpus, args.systems)
    cfg = PretrainConfig(history=args.history, horizon=args.horizon, batch_size=args.batch_size, steps=args.steps,
                         lr=args.lr, eval_every=args.eval_every, stride=args.stride)
    train, val = _corpus_windows(corpus, names, cfg)
    full = WestWorldConfig(d_model=args.d_model, n_heads=args.heads, n_blocks=args.blocks, n_experts=args.experts,
                           expert_hidden=args.expert_hidden, bins=args.bins, d_state=args.d_state, expand=args.expand)
    variants = {"WestWorld": full, "w/o Sys-MoE": dataclasses.replace(full, use_moe=False),
                "w/o structure": dataclasses.replace(full, use_structure=False)}
    eval_systems = [s for s in (args.eval_systems or ",".join(HELD_OUT_ZERO_SHOT)).split(",") if s]
    models, params = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mcfg in variants.items():
            path = Path(tmp) / f"{len(models)}.pt"
            pretrain(train, val, mcfg, cfg, path, seed=args.seed)
            models[label] = load_checkpoint(path)
            params[label] = sum(p.numel() for p in models[label].net.parameters())
    res = zero_shot(models, {s: load_system(corpus, s) for s in eval_systems},
                    {s: make_system(s).model for s in eval_systems}, args.out, history=cfg.history,
                    horizon=cfg.horizon, stride=cfg.history + cfg.horizon)
    (Path(args.out) / "ablation.json").write_text(json.dumps({"parameters": params, "results": res}, indent=2))
    table = format_table(res)
    (Path(args.out) / "ablation.md").write_text(table + "\n")
    print(table)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    return 0


def _name_paths(text: str, option: str, name: str) -> dict[str, str]:
    """``"a=x.pt,b=y.pt"`` -> ``{"a": "x.pt", "b": "y.pt"}``.

    Raises:
        ConfigError: an entry is not NAME=PATH.
    """
    from ws_mppi.config import ConfigError

    out = {}
    for spec in (s for s in text.split(",") if s):
        key, sep, path = spec.partition("=")
        if not sep or not key or not path:
            raise ConfigError(f"{option} entries are {name}=PATH, got {spec!r}")
        out[key] = path
    return out


def cmd_eval_control(args) -> int:
    from ws_mppi.config import ConfigError
    from ws_mppi.control_table import run_control_table
    from ws_sim.dataset import read_dataset
    from ws_sim.envs import make_env
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import PretrainConfig

    _headless_gl()
    nthread = _set_threads(args.threads)
    ccfg = _controller_config(args)
    pretrained, extra = _name_paths(args.pretrained, "--pretrained", "KIND"), _name_paths(args.extra, "--extra", "LABEL")
    if not pretrained and not extra:
        raise ConfigError("nothing to evaluate: give --pretrained and/or --extra")
    history = args.history
    if history is None:
        history = load_checkpoint(next(iter(pretrained.values()))).history if pretrained else 10
    env = make_env(args.env)
    train, val = read_dataset(args.train), read_dataset(args.val)
    for name, ds in (("train", train), ("val", val)):
        ds.check_matches(env.state_channels, env.action_channels, f"--{name} dataset {getattr(args, name)}")
    tcfg = PretrainConfig(history=history, horizon=ccfg.mppi.horizon, batch_size=args.batch_size, steps=args.steps,
                          lr=args.lr, warmup=min(100, max(1, args.steps // 10)), eval_every=args.eval_every,
                          patience=args.patience, stride=args.stride, val_fraction=0.0)
    try:
        run_control_table(args.env, train, val, pretrained, args.out, tcfg, ccfg,
                          variants=[v for v in args.variants.split(",") if v],
                          seeds=range(args.seed, args.seed + args.episodes), max_steps=args.max_steps,
                          extra=extra, nthread=nthread, seed=args.train_seed)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    print((Path(args.out) / "table3.md").read_text(), end="")
    print(f"wrote {Path(args.out) / 'table3.md'}, table3.json and table3.png")
    return 0


def cmd_distill(args) -> int:
    import json

    from ws_mppi.config import ConfigError
    from ws_distill.distill import distill, student_config
    from ws_worldmodel.checkpoint import load_checkpoint
    from ws_worldmodel.pretrain import PretrainConfig

    _headless_gl()
    _set_threads(args.threads)
    teacher = load_checkpoint(args.teacher)
    if getattr(teacher, "kind", None) != "westworld":
        raise ConfigError(f"{args.teacher} is not a WestWorld checkpoint (ws pretrain --model westworld)")
    corpus = Path(args.corpus)
    names = _pretraining_systems(corpus, args.systems)
    cfg = PretrainConfig(history=args.history or teacher.history, horizon=args.horizon or teacher.horizon,
                         batch_size=args.batch_size, steps=args.steps, lr=args.lr, eval_every=args.eval_every,
                         stride=args.stride, patience=args.patience)
    train, val = _corpus_windows(corpus, names, cfg)
    scfg = student_config(teacher.net.cfg, n_blocks=args.blocks, d_model=args.d_model, expert_hidden=args.expert_hidden)
    try:
        hist = distill(teacher, train, val, scfg, cfg, args.out, alpha=args.alpha, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    t_params = sum(p.numel() for p in teacher.net.parameters())
    s_params = sum(p.numel() for p in load_checkpoint(args.out).net.parameters())
    print(json.dumps({"student": str(args.out), "teacher": str(args.teacher), "alpha": args.alpha,
                      "teacher_parameters": t_params, "student_parameters": s_params, "steps": hist["steps"],
                      "best_val_ce": hist["best_val_loss"]}))
    return 0


def cmd_export(args) -> int:
    import json

    from ws_mppi.config import ConfigError
    from ws_distill.export import OnnxSequenceModel, export_onnx, parity
    from ws_worldmodel.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    if not hasattr(model, "systems"):
        raise ConfigError(f"{args.checkpoint} is not a trajectory world model")
    system = args.system or (next(iter(model.systems)) if len(model.systems) == 1 else None)
    if system is None:
        raise ConfigError(f"the checkpoint knows {sorted(model.systems)}: choose one with --system")
    try:
        path = export_onnx(model, system, args.horizon, args.out, opset=args.opset)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    res = parity(model, OnnxSequenceModel(path), batch_sizes=(1, 64))
    print(json.dumps({"onnx": str(path), "system": system, "history": model.history, "horizon": args.horizon,
                      "opset": args.opset, "parity_max_abs_diff": res["max_abs_diff"], "per_batch": res["per_batch"]}))
    return 0


def cmd_launch(args) -> int:
    from ws_mppi.config import ConfigError
    from ws_ros.graphs import GRAPHS, run

    if args.list or not args.graph:
        for name, g in GRAPHS.items():
            print(f"{name:<14} {g['description']}")
        return 0
    if args.graph not in GRAPHS:
        raise ConfigError(f"unknown graph {args.graph!r}; choose one of {sorted(GRAPHS)}")
    import importlib.util

    if importlib.util.find_spec("rclpy") is None:
        raise ConfigError("ws launch needs rclpy: source a ROS 2 install, or pip install -e '.[ros]'")
    overrides = {}
    for item in args.param:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise ConfigError(f"-p expects NAME:=VALUE (ROS 2's syntax), got {item!r}")
        overrides[name] = value
    if args.dynamics:
        overrides["dynamics"] = args.dynamics
    import signal

    # A shell starts background jobs with SIGINT ignored, and Python keeps it ignored: then neither
    # Ctrl-C nor 'kill -INT' would stop the graph. ros2 launch handles SIGINT whatever it inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.processes:
        return run(args.graph, overrides, duration=args.duration)
    from ws_ros.graphs import run_in_process

    return run_in_process(args.graph, overrides, duration=args.duration)


def cmd_mppi_run(args) -> int:
    from ws_mppi.report import run_comparison

    _headless_gl()
    nthread = _set_threads(args.threads)
    cfg = _controller_config(args)
    primary = args.dynamics
    compare = [c for c in (args.compare.split(",") if args.compare else []) if c and c != primary]
    run_comparison(env_name=args.env, controllers=[primary] + compare, config=cfg, episodes=args.episodes,
                   seed=args.seed, max_steps=args.max_steps, out_dir=args.out, video=not args.no_video,
                   nthread=nthread)
    return 0


def cmd_teleop(args) -> int:
    import importlib.util

    from ws_mppi.config import ConfigError

    if importlib.util.find_spec("rclpy") is None:
        raise ConfigError("ws teleop needs rclpy: source a ROS 2 install, or pip install -e '.[ros]'")
    if args.rate <= 0 or args.hold <= 0:
        raise ConfigError("--rate and --hold must be positive")
    from ws_ros.nodes.teleop import run_keyboard

    return run_keyboard(rate_hz=args.rate, hold_s=args.hold)


def cmd_hitl_convert(args) -> int:
    from ws_policy.data import write_demos
    from ws_ros.mcap_io import recording_to_episodes

    episodes, attrs = [], None
    for path in args.recordings:
        eps, a = recording_to_episodes(path, task=args.task)
        episodes += eps
        attrs = attrs or a
    out = write_demos(episodes, attrs, args.out)
    human = sum(int(e.actor.sum()) for e in episodes)
    steps = sum(len(e.actions) for e in episodes)
    print(f"wrote {out}: {len(episodes)} episodes ({sum(e.success for e in episodes)} successful), {steps} steps, "
          f"{human} by the human ({100 * human / max(steps, 1):.0f} %)")
    return 0


def _flow_policy_and_episodes(init, files):
    """``(model, payload, episodes, attrs)``: a one-network flow policy and the episodes of the
    comma-separated ``files`` (their first file's attributes), checked against each other."""
    from ws_mppi.config import ConfigError
    from ws_policy.data import read_demos
    from ws_policy.train import TwoStagePolicy, load_policy

    model, payload = load_policy(init)
    if isinstance(model, TwoStagePolicy) or not model.cfg.predicts_actions or model.cfg.action_head != "flow":
        raise ConfigError(f"{init}: DAgger fine-tunes a one-network flow policy (mot or action_only)")
    episodes, attrs = [], None
    for path in str(files).split(","):
        eps, a = read_demos(path)
        episodes += eps
        attrs = attrs or a
    if model.cfg.image_size != int(attrs["image_size"]):
        raise ConfigError(f"the policy takes {model.cfg.image_size} px images; {files} has {attrs['image_size']} px")
    return model, payload, episodes, attrs


def _dagger_config(args, **kw):
    """A :class:`ws_policy.hitl.DaggerConfig` from the retraining flags (:func:`_add_retrain_args`)
    and ``kw``; a bad value is a :class:`ConfigError`."""
    from ws_mppi.config import ConfigError
    from ws_policy.hitl import DaggerConfig

    try:
        return DaggerConfig(train_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            conditioned=not args.plain_bc, successes_only=args.successes_only,
                            indicator_on_actions=args.indicator_on_actions,
                            value_steps=args.value_steps, n_step=args.n_step or None, value_folds=args.value_folds,
                            threshold=args.threshold, seed=args.seed, **kw)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def cmd_hitl_retrain(args) -> int:
    import dataclasses
    import json

    from tqdm import tqdm

    from ws_policy.hitl import episode_limit, retrain
    from ws_policy.train import save_policy

    _set_threads(args.threads)
    model, payload, episodes, attrs = _flow_policy_and_episodes(args.init, args.aggregate)
    cfg = _dagger_config(args)
    kind = "advantage-conditioned" if cfg.conditioned else \
        "behaviour cloning on the successful episodes" if cfg.successes_only else "plain behaviour cloning"
    print(f"retraining {args.init} ({kind}) on {len(episodes)} episodes of {args.aggregate}, {cfg.train_steps} steps")
    bar = tqdm(total=cfg.train_steps, desc="retraining", unit="step", leave=False)
    vbar = tqdm(total=cfg.value_steps * cfg.value_folds if cfg.conditioned else 0, desc="value", unit="step",
                leave=False, disable=not cfg.conditioned)
    new, info = retrain(model, episodes, cfg, episode_limit(attrs["task"]), progress=bar, log=tqdm.write,
                        value_progress=vbar)
    bar.close()
    vbar.close()
    extra = {**payload.get("extra", {}), "workspace": attrs.get("workspace", "full"), "aggregate": str(args.aggregate),
             "retrain": dataclasses.asdict(cfg)}
    path = save_policy(new, args.out, extra=extra)
    print(f"wrote {path}: " + json.dumps({k: v for k, v in info.items() if isinstance(v, (int, float, str))}))
    return 0


def cmd_hitl_dagger(args) -> int:
    import dataclasses
    import json

    from tqdm import tqdm

    from ws_policy.data import write_demos
    from ws_policy.hitl import dagger, episode_limit, evaluate_autonomous, retrain
    from ws_policy.train import save_policy

    _headless_gl()
    _set_threads(args.threads)
    model, payload, demos, attrs = _flow_policy_and_episodes(args.init, args.demos)
    cfg = _dagger_config(args, rounds=args.rounds, episodes_per_round=args.episodes_per_round,
                         autonomous_per_round=args.autonomous_per_round, eval_episodes=args.eval_episodes,
                         eval_seed=args.eval_seed, rollout_seed=args.rollout_seed, drift_m=args.drift,
                         min_expert_steps=args.min_expert_steps, stall_steps=args.stall_steps,
                         grip_steps=args.grip_steps, reach_m=args.reach, latency=args.latency)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = "advantage-conditioned" if cfg.conditioned else "plain behaviour cloning"
    print(f"HG-DAgger ({kind}): {cfg.rounds} rounds of {cfg.episodes_per_round} rollouts, {cfg.train_steps} "
          f"training steps each, {cfg.eval_episodes} evaluation episodes per round (seeds {cfg.eval_seed}+)")
    extra = {"workspace": attrs.get("workspace", "full"), "dagger": dataclasses.asdict(cfg)}

    def on_round(r, m, aggregate, rec):
        path = save_policy(m, out / f"round{r}.pt", extra={**payload.get("extra", {}), **extra, "round": r})
        rec["checkpoint"] = str(path)

    bar = tqdm(total=cfg.rounds * cfg.train_steps, desc="retraining", unit="step", leave=False)
    vbar = tqdm(total=cfg.rounds * cfg.value_steps * cfg.value_folds if cfg.conditioned else 0, desc="value", unit="step", leave=False,
                disable=not cfg.conditioned)
    result = dagger(model, demos, attrs, cfg, progress=bar, log=tqdm.write, on_round=on_round, value_progress=vbar)
    bar.close()
    vbar.close()
    write_demos(result["aggregate"], attrs, out / "aggregate.hdf5")
    report = {"init": str(args.init), "demos": str(args.demos), "config": dataclasses.asdict(cfg),
              "rounds": result["rounds"]}
    if args.compare_bc:
        # the same aggregate, the same start and the same steps (rounds x steps): only the indicator differs
        print("on the final aggregate, from the starting policy, rounds x steps each: plain behaviour cloning, "
              "behaviour cloning on the successful episodes" + (", and advantage conditioning" if cfg.conditioned else ""))
        for name, conditioned, successes_only in (("plain_bc", False, False), ("filtered_bc", False, True),
                                                  ("conditioned_final", True, False)):
            if conditioned and not cfg.conditioned:
                continue
            b_cfg = dataclasses.replace(cfg, conditioned=conditioned, successes_only=successes_only,
                                        train_steps=cfg.train_steps * cfg.rounds)
            bar = tqdm(total=b_cfg.train_steps, desc=name, unit="step", leave=False)
            pol, _ = retrain(model, result["aggregate"], b_cfg, episode_limit(attrs["task"]), progress=bar,
                             log=tqdm.write)
            bar.close()
            save_policy(pol, out / f"{name}.pt", extra={**payload.get("extra", {}), **extra, "baseline": name})
            rep = evaluate_autonomous(pol, attrs, cfg)
            report[name] = {k: rep.get(k) for k in ("success_rate", "successes", "episodes", "ci95", "failure_modes")}
            print(f"{name}: {rep['successes']}/{rep['episodes']} (95 % CI {rep['ci95']})")
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "report.json")
    _plot_dagger(report, out / "dagger.png")
    print(json.dumps({"rounds": [{k: r.get(k) for k in ("round", "successes", "episodes", "ci95", "expert_share")}
                                 for r in report["rounds"]],
                      **{k: report[k] for k in ("plain_bc", "filtered_bc", "conditioned_final") if k in report}}))
    print(f"wrote {out}/report.json, dagger.png, aggregate.hdf5 and round*.pt")
    return 0


def _plot_dagger(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["round"] for r in rounds]
    y = [r["success_rate"] for r in rounds]
    lo = [r["success_rate"] - r["ci95"][0] for r in rounds]
    hi = [r["ci95"][1] - r["success_rate"] for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=4, label="policy (autonomous)")
    share = [r.get("expert_share") for r in rounds if r.get("expert_share") is not None]
    if share:
        ax.plot(x[:len(share)], share, "s--", label="expert share of rollout steps")
    if "plain_bc" in report:
        ax.axhline(report["plain_bc"]["success_rate"], color="grey", ls=":", label="plain BC, final aggregate")
    if "filtered_bc" in report:
        ax.axhline(report["filtered_bc"]["success_rate"], color="tab:purple", ls="--",
                   label="BC on successes, final aggregate")
    if "conditioned_final" in report:
        ax.axhline(report["conditioned_final"]["success_rate"], color="tab:green", ls="-.",
                   label="advantage-conditioned, final aggregate")
    ax.set_xticks(x)
    ax.set_xlabel("DAgger round (the policy entering it)")
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def cmd_hitl_recover(args) -> int:
    from ws_ros.mcap_io import recover

    n = recover(args.recording, args.out)
    print(f"wrote {args.out}: {n} messages recovered from {args.recording}")
    return 0


def cmd_expert_train(args) -> int:
    import json

    from ws_mppi.expert import train_expert

    st = train_expert(args.env, args.out, args.steps, algo=args.algo, seed=args.seed, chunk_steps=args.chunk,
                      threads=args.threads, progress=not args.no_progress, eval_episodes=args.eval_episodes)
    last = st["curve"][-1] if st["curve"] else {}
    print(json.dumps({"run": str(args.out), "steps": st["num_timesteps"], "wall_h": round(st["wall_s"] / 3600, 3),
                      "last_return": last.get("mean_return"), "best": st["best"],
                      "curve": str(args.out / "curve.csv")}))
    return 0


def cmd_expert_export(args) -> int:
    import json

    from ws_mppi.expert import export_reference

    files = export_reference(args.run, args.out, n_episodes=args.episodes, seed=args.seed, which=args.which)
    meta = json.loads((files[0].parent / "expert.json").read_text())
    print(json.dumps({"out": str(files[0].parent), "files": [f.name for f in files],
                      "bytes": sum(f.stat().st_size for f in files), "returns": meta["returns"],
                      "return_mean": meta["return_mean"], "return_std": meta["return_std"]}))
    return 0


def cmd_expert_eval(args) -> int:
    import json

    import numpy as np

    from ws_mppi.expert import evaluate_expert

    eps = evaluate_expert(args.expert, episodes=args.episodes, seed=args.seed, max_steps=args.max_steps)
    r = np.array([e["return"] for e in eps])
    print(json.dumps({"expert": str(args.expert), "seeds": [e["seed"] for e in eps],
                      "returns": [round(float(x), 2) for x in r], "lengths": [e["length"] for e in eps],
                      "return_mean": round(float(r.mean()), 2),
                      "return_std": round(float(r.std(ddof=1)) if len(r) > 1 else 0.0, 2)}))
    return 0


def cmd_policy_collect(args) -> int:
    from tqdm import tqdm

    from ws_policy.data import collect_demos, write_demos
    from ws_sim.piper_tasks import TASKS

    if args.task not in TASKS:
        from ws_mppi.config import ConfigError

        raise ConfigError(f"unknown task {args.task!r}; choose one of {list(TASKS)}")
    bar = tqdm(total=args.episodes, desc=f"{args.task} demos", unit="ep")
    episodes, attrs = collect_demos(args.task, args.episodes, seed=args.seed, size=args.size, camera=args.camera,
                                    failure_rate=args.failures, randomize=not args.no_randomize,
                                    workspace=args.workspace, progress=lambda done, total: bar.update(1))
    bar.close()
    path = write_demos(episodes, attrs, args.out)
    wins = sum(e.success for e in episodes)
    steps = sum(len(e.actions) for e in episodes)
    print(f"wrote {path}: {len(episodes)} episodes ({wins} successful, "
          f"{sum(bool(e.failure) for e in episodes)} with a deliberate failure), {steps} steps, "
          f"{args.size}x{args.size} RGB-D from the {args.camera!r} camera")
    return 0


def cmd_policy_train(args) -> int:
    import json

    import numpy as np
    from tqdm import tqdm

    from ws_policy.data import DemoDataset, read_demos
    from ws_policy.model import PolicyConfig, default_vocabulary
    from ws_policy.train import TwoStagePolicy, load_policy, save_policy, train_policy

    _set_threads(args.threads)
    episodes, attrs = [], None
    for path in str(args.demos).split(","):
        eps, a = read_demos(path)
        if attrs is not None and int(a["image_size"]) != int(attrs["image_size"]):
            from ws_policy.data import DemoError

            raise DemoError(f"{path} has {a['image_size']} px images, {args.demos.split(',')[0]} "
                            f"{attrs['image_size']} px: train on one size")
        episodes += eps
        attrs = attrs or a
    size = int(attrs["image_size"])
    video_eps = []
    if args.videos:  # episodes used as video only (seed 004's action-free data in the policy's training mix)
        from ws_mppi.config import ConfigError
        from ws_policy.data import DemoError

        if args.model == "action_only":
            raise ConfigError("--videos train the video and depth prediction; --model action_only predicts none")
        if not 0.0 < args.video_share < 1.0:
            raise ConfigError(f"--video-share must be in (0, 1), got {args.video_share}")
        for path in str(args.videos).split(","):
            eps, a = read_demos(path)
            if int(a["image_size"]) != size:
                raise DemoError(f"{path} has {a['image_size']} px images, the demonstrations {size} px: one size")
            video_eps += eps
    curve = []
    callback = None
    if args.eval_every:  # closed-loop checks while training
        if args.model in ("two_stage", "world"):
            from ws_mppi.config import ConfigError

            raise ConfigError("--eval-every evaluates a policy while it trains: not for two_stage or world")
        from ws_policy.evaluate import evaluate_policy
        from ws_policy.train import PolicyRunner

        def evaluate_now(step, net):
            if step % args.eval_every:
                return False
            net.eval()
            rep = evaluate_policy(PolicyRunner(net, seed=args.seed), args.eval_task or attrs["task"], args.eval_episodes,
                                  args.eval_seed, size=size, camera=attrs.get("camera", "task"), chunk=net.cfg.chunk,
                                  latency=0, video=False, workspace=attrs.get("workspace", "full"))
            net.train()
            curve.append({"step": step, "success_rate": rep["success_rate"], "ci95": rep["ci95"]})
            tqdm.write(f"step {step}: success {rep['successes']}/{rep['episodes']}")
            return args.target_success is not None and rep["success_rate"] >= args.target_success

        callback = evaluate_now
    base = PolicyConfig.gpu if args.size == "gpu" else PolicyConfig.cpu
    over = {k: v for k, v in {"chunk": args.chunk, "frames": args.frames, "d_model": args.d_model,
                              "layers": args.layers, "alpha": args.alpha,
                              "action_weight": args.action_weight}.items() if v is not None}
    if args.privileged:
        over["privileged"] = True
    kinds = {"mot": [("mot", "flow")], "mot_idm": [("mot", "idm")], "action_only": [("action_only", "flow")],
             "world": [("world", "flow")], "two_stage": [("world", "flow"), ("idm", "idm")]}
    init = None
    if args.init:
        init, _ = load_policy(args.init)
    video = None
    if args.video_model == "dit":  # the video world model as the video-depth stream (issue 9)
        from ws_mppi.config import ConfigError

        if args.model not in ("mot", "world"):
            raise ConfigError(f"--video-model dit is the video-depth stream of --model mot or world, not {args.model}")
        over.update(video_model="dit", dit_kind=args.video_kind, dit_obs=args.obs_stream)
        if args.video_init:
            if args.init:
                raise ConfigError("give --init (a policy) or --video-init (a world model), not both")
            import dataclasses

            from ws_worldmodel.video.experts import load as load_video

            video, _ = load_video(args.video_init)
            over.update(dit=dataclasses.asdict(video.cfg), d_model=video.cfg.d_model, heads=video.cfg.heads,
                        layers=video.cfg.layers)
    elif args.video_init or args.obs_stream:
        from ws_mppi.config import ConfigError

        raise ConfigError(f"{'--video-init' if args.video_init else '--obs-stream'} needs --video-model dit")
    nets, hist_all = [], {}
    stages = kinds[args.model]
    if args.model == "two_stage" and init is not None and getattr(init, "cfg", None) is not None \
            and init.cfg.mode == "world":  # a trained world model is stage one as it is: train only the IDM
        nets.append(init)
        stages = stages[1:]
    if video_eps and not any(mode in ("mot", "world") for mode, _ in stages):
        from ws_mppi.config import ConfigError

        raise ConfigError("--videos would go unused: the given world model is stage one as it is, and the "
                          "inverse-dynamics stage predicts no video")
    for mode, head in stages:
        future = video.cfg.image_size if video is not None else size // 2
        try:
            cfg = base(mode=mode, action_head=head, image_size=size, future_size=future,
                       fov_y_deg=float(attrs.get("fovy", 60.0)), vocab=tuple(default_vocabulary()), **over)
        except ValueError as e:
            from ws_mppi.config import ConfigError

            raise ConfigError(f"policy config: {e}") from e
        if video is not None:  # the stream starts as the trained world model (its 'video.*' weights); the rest is new
            import torch

            init = torch.nn.Module()
            init.video = video
        ds = DemoDataset(episodes, chunk=cfg.chunk, frames=cfg.frames, stride=cfg.stride,
                         successes_only=not args.keep_failures)
        vids = None
        if video_eps and cfg.predicts_video:  # failed episodes' videos are still true videos
            vids = DemoDataset(video_eps, chunk=cfg.chunk, frames=cfg.frames, stride=cfg.stride,
                               successes_only=False, use_actions=False)
        bar = tqdm(total=args.steps, desc=f"train {mode}" + ("+idm" if head == "idm" and mode != "idm" else ""),
                   unit="step")
        net, hist = train_policy(cfg, ds, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 init=init if mode != "idm" else None, progress=bar, callback=callback,
                                 videos=vids, video_share=args.video_share)
        bar.close()
        nets.append(net)
        hist_all[mode] = {"loss_first": float(np.mean(hist["loss"][:20])), "loss_last": float(np.mean(hist["loss"][-20:])),
                          "seconds": round(hist["seconds"], 1), "loaded_tensors": hist["loaded_tensors"],
                          "steps_run": len(hist["loss"]), "stopped_at": hist["stopped_at"], "success_curve": curve}
    model = TwoStagePolicy(*nets) if args.model == "two_stage" else nets[0]
    extra = {"task": args.eval_task or attrs.get("task"), "camera": attrs.get("camera"), "demos": str(args.demos),
             "videos": str(args.videos) if args.videos else None,
             "workspace": attrs.get("workspace", "full"),
             "kind": args.model,
             "steps": args.steps, "history": hist_all, "init": str(args.init) if args.init else None}
    path = save_policy(model, args.out, extra)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} ({args.model}, {params / 1e6:.2f} M parameters): " +
          json.dumps(hist_all))
    return 0


_INDICATORS = {"improvement": 1, "not-improvement": 0, "unknown": 2}


def cmd_policy_eval(args) -> int:
    import json

    from tqdm import tqdm

    from ws_mppi.config import ConfigError
    from ws_policy.evaluate import evaluate_policy

    _set_threads(args.threads)
    out = args.out or Path("runs") / f"policy-{args.task}-{time_tag()}"
    runner = None
    if args.checkpoint != "scripted":  # load and check before any progress bar
        from ws_policy.train import PolicyRunner, load_policy

        model, payload = load_policy(args.checkpoint)
        try:
            runner = PolicyRunner(model, steps=args.euler_steps, seed=args.seed, indicator=_INDICATORS[args.indicator])
        except ValueError as e:
            raise ConfigError(f"{args.checkpoint}: {e}") from e
    bar = tqdm(total=args.episodes, desc=f"eval {args.task}", unit="ep")

    def progress(done, total, wins):
        bar.update(1)
        bar.set_postfix(success=f"{wins}/{done}")

    if runner is None:
        report = evaluate_policy("scripted", args.task, args.episodes, args.seed, size=args.size, out_dir=out,
                                 video=not args.no_video, progress=progress, name="scripted",
                                 workspace=args.workspace or "full")
    else:
        if args.demos:
            from ws_policy.data import read_demos
            from ws_policy.evaluate import offline_action_error

            off = offline_action_error(runner, read_demos(args.demos)[0])
            print(f"offline on {args.demos}: chunk error {off['chunk_error_rad']} rad vs holding still "
                  f"{off['hold_still_error_rad']} rad over {off['windows']} windows")
        latency = args.latency if args.latency == "measured" else int(args.latency)
        report = evaluate_policy(runner, args.task, args.episodes, args.seed, size=model.cfg.image_size,
                                 camera=(payload.get("extra") or {}).get("camera") or "task",
                                 replan_every=args.replan_every, chunk=model.cfg.chunk, latency=latency,
                                 ensemble_m=None if args.no_ensemble else args.ensemble_m, out_dir=out,
                                 video=not args.no_video, progress=progress,
                                 name=(payload.get("extra") or {}).get("kind") or "policy",
                                 workspace=args.workspace or (payload.get("extra") or {}).get("workspace") or "full")
    bar.close()
    lo, hi = report["ci95"]
    print(f"{args.task}: {report['successes']}/{report['episodes']} successes = {report['success_rate']:.2f} "
          f"(95% CI {lo:.2f}-{hi:.2f}); inference latency {json.dumps(report['latency'])}; gaps {report['gaps']}")
    if report.get("failure_modes"):
        m = report["failure_modes"]
        miss = f" (median miss {m['median_miss_m'] * 100:.1f} cm)" if m["median_miss_m"] is not None else ""
        print(f"failures: {m['cube_not_lifted']} with the cube never lifted, {m['lifted_not_placed']} lifted but not "
              f"placed{miss}")
    print(f"report: {out / 'report.json'}  videos: {report['videos']}")
    return 0


def _add_retrain_args(p, steps_note: str) -> None:
    """The retraining flags shared by 'ws hitl dagger' and 'ws hitl retrain'."""
    p.add_argument("--steps", type=int, default=1000, help=f"fine-tuning steps {steps_note}".strip())
    p.add_argument("--batch-size", type=int, default=32, help="training windows per step")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (cosine schedule)")
    p.add_argument("--value-steps", type=int, default=1000, help=f"value-function training steps {steps_note}".strip())
    p.add_argument("--n-step", type=int, default=0,
                   help="advantage horizon n, steps (0: to the episode's end, the Monte-Carlo advantage)")
    p.add_argument("--value-folds", type=int, default=2,
                   help="cross-fitting: each episode's advantages come from a value fitted on the other folds")
    p.add_argument("--threshold", type=float, default=0.0, help="advantage above which a policy step is an improvement")
    p.add_argument("--plain-bc", action="store_true", help="retrain by plain behaviour cloning (no indicator)")
    p.add_argument("--successes-only", action="store_true",
                   help="with --plain-bc: clone the successful episodes only (filtered behaviour cloning)")
    p.add_argument("--indicator-on-actions", action="store_true",
                   help="add the improvement indicator's embedding to every action token too, not only to the "
                        "instruction token")
    p.add_argument("--seed", type=int, default=0, help="seed of the training (and the value's folds)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def time_tag() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user asked for: reported in one line, no traceback."""
    from ws_mppi.config import ConfigError
    from ws_mppi.expert import ExpertError
    from ws_sim.channels import ChannelMismatchError
    from ws_sim.corpus import CorpusError
    from ws_sim.dataset import DatasetError
    from ws_sim.envs import NonFiniteStateError, UnknownEnvironmentError
    from ws_worldmodel.checkpoint import CheckpointError

    from ws_policy.data import DemoError
    from ws_policy.model import PolicyInputError
    from ws_policy.train import PolicyCheckpointError
    from ws_ros.mcap_io import RecordingError

    return (RecordingError, PolicyInputError, PolicyCheckpointError, ConfigError, ChannelMismatchError, CorpusError, DatasetError, NonFiniteStateError, UnknownEnvironmentError,
            CheckpointError, DemoError, ExpertError, FileNotFoundError, IsADirectoryError, PermissionError)


def _add_training_args(p: argparse.ArgumentParser, *, steps: int | None, lr: float, eval_every: int | None,
                       stride: int = 10, patience: bool = True, window_from: str | None = None) -> None:
    """Window, optimisation and run options shared by pretraining and the protocols.

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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)


def _add_net_args(p: argparse.ArgumentParser, experts: bool = True) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from ws_sim.envs import ENVIRONMENTS

    envs = sorted(ENVIRONMENTS) + ["go1", "piper"]
    p = argparse.ArgumentParser(prog="ws", description="WorldScape: learned world models for robot control.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("collect", help="collect an oracle-MPPI dynamics dataset (seed 003, App. C.5)",
                       description="Run oracle MPPI (MuJoCo as the model) and keep the lowest-cost sampled rollouts "
                                   "of every step as training segments (plus all samples of a few extra episodes); "
                                   "validation from other seeds. Writes OUT/train and OUT/val.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--env", default="hopper", help=f"environment: {envs}")
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.add_argument("--format", choices=["hdf5", "minari"], default="hdf5", help="D4RL-style HDF5 or Minari")
    c.add_argument("--train-episodes", type=int, default=10, help="episodes keeping the lowest-cost fraction")
    c.add_argument("--full-episodes", type=int, default=2, help="extra episodes keeping every sampled rollout")
    c.add_argument("--val-episodes", type=int, default=3, help="validation episodes (other seeds)")
    c.add_argument("--keep-train", type=float, default=0.1, help="fraction of rollouts kept per step (train)")
    c.add_argument("--keep-val", type=float, default=0.3, help="fraction of rollouts kept per step (val)")
    c.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    c.add_argument("--seed", type=int, default=0, help="first episode seed (episodes use seed, seed+1, ...)")
    c.add_argument("--history", type=int, default=0,
                   help="prefix each kept rollout with this many executed steps (for trajectory world models "
                        "that plan from a history: WestWorld, TrajWorld, TDM)")
    _add_controller_args(c)
    c.set_defaults(func=cmd_collect)

    t = sub.add_parser("train", help="train an MLPEnsemble dynamics model",
                       description="Fit a probabilistic MLP ensemble (seed 003 App. D.1) on a dataset from ws collect "
                                   "(HDF5 or Minari) or a plain D4RL-format HDF5 file (with --env), and write a "
                                   "self-contained checkpoint.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--train", type=Path, required=True,
                   help="training dataset: HDF5 file or Minari directory from ws collect, or a D4RL-format HDF5 file")
    t.add_argument("--val", type=Path, required=True, help="validation dataset (same kinds as --train)")
    t.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    t.add_argument("--env", default=None,
                   help=f"environment of the datasets ({envs}): checks their channels, and reads plain D4RL files "
                        "(no WorldScape metadata) with its channels, state qpos+qvel from infos/qpos, infos/qvel, "
                        "and its MuJoCo model for the successors of episode ends the file does not store")
    t.add_argument("--ensemble-size", type=int, default=5)
    t.add_argument("--elites", type=int, default=3)
    t.add_argument("--hidden", type=int, default=200)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--epochs", type=int, default=100, help="maximum epochs (early stopping may end sooner)")
    t.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs")
    t.add_argument("--steps-per-epoch", type=int, default=400, help="gradient steps per epoch (0: full pass)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    cp = sub.add_parser("corpus", help="multi-system pretraining corpus", description="Pretraining corpus commands.")
    csub = cp.add_subparsers(dest="corpus_command", required=True, metavar="SUBCOMMAND")
    cb = csub.add_parser("build", help="generate trajectories from dm_control and Gymnasium systems (resumable)",
                         description="Roll out dm_control suite domains and Gymnasium MuJoCo environments with a mix of "
                                     "random, coloured-noise (pink, red) and oracle-MPPI behaviours, storing the full "
                                     "MuJoCo state. Work is cut into shards written atomically as OUT/<system>/shard_NNN.hdf5; "
                                     "run the same command again to resume after an interruption. gym-hopper and "
                                     "gym-walker2d (zero-shot) and gym-pusher (few-shot) are built too but held out of "
                                     "pretraining.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    cb.add_argument("--out", type=Path, required=True, help="corpus directory")
    cb.add_argument("--systems", default="all", help="comma-separated system names, or 'all' (see ws_sim.corpus.SYSTEMS)")
    cb.add_argument("--episodes", type=int, default=20, help="episodes per system")
    cb.add_argument("--episodes-per-shard", type=int, default=5, help="episodes per shard (resume/parallel unit)")
    cb.add_argument("--steps", type=int, default=None, help="episode length (default: each system's, 500 or 1000)")
    cb.add_argument("--behaviours", default="random,pink,red,mppi", help="behaviour mix drawn per episode")
    cb.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="worker processes")
    cb.add_argument("--seed", type=int, default=0)
    cb.set_defaults(func=cmd_corpus_build)

    pt = sub.add_parser("pretrain", help="pretrain WestWorld on a corpus (one process or torchrun/DDP)",
                        description="Pretrain the WestWorld trajectory world model (seed 003) on the systems of a corpus, "
                                    "held-out systems excluded. Runs on one process, or data-parallel under "
                                    "'torchrun --nproc_per_node N $(which ws) pretrain ...' (gloo on CPU, NCCL on CUDA). "
                                    "Writes the best checkpoint to --out and the training state to OUT.state (--resume).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    _add_training_args(pt, steps=2000, lr=3e-4, eval_every=200)
    _add_net_args(pt)
    pt.add_argument("--no-moe", action="store_true", help="ablation: dense SSM block of comparable size")
    pt.add_argument("--no-structure", action="store_true", help="ablation: no structural embedding")
    pt.add_argument("--resume", action="store_true", help="continue from OUT.state")
    pt.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="world-model evaluation protocols (seed 003)",
                        description="Evaluation protocols of seed 003 that write tables and plots.")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="PROTOCOL")
    zs = esub.add_parser("zero-shot", help="Table 1: predict 100 steps from 50 on systems unseen in pretraining",
                         description="Zero-shot long-horizon prediction (seed 003 Table 1, App. D.2): every episode of "
                                     "each held-out system is cut into history+horizon segments; each model predicts "
                                     "the horizon from the history and the actions; MAE/MSE in normalised units (each "
                                     "system min-max normalised by all of its own states and actions, as the seed "
                                     "does). Writes zero_shot.md, zero_shot.json and a plot per system.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    zs.add_argument("--corpus", type=Path, required=True,
                    help="the data to evaluate on: a corpus folder from ws corpus build (<system>/shard_NNN.hdf5), "
                         "a folder of .hdf5/.h5 trajectory files (one system per file, named by its stem), or one "
                         "such file; plain D4RL-format files need --env")
    zs.add_argument("--env", default=None,
                    help=f"environment of the data ({envs}): the channels of plain D4RL files (state qpos+qvel "
                         "from infos/qpos, infos/qvel) and the MuJoCo model for the structural embedding and the "
                         "successors of episode ends a D4RL file does not store; data with metadata is checked "
                         "against it. Without it each dataset's own system or environment gives the model")
    zs.add_argument("--checkpoints", required=True,
                    help="comma-separated [name=]path of WestWorld/TrajWorld/TDM checkpoints from ws pretrain")
    zs.add_argument("--systems", default="",
                    help="corpus systems to evaluate (empty: gym-hopper,gym-walker2d), or file stems in a folder "
                         "of files (empty: all of them)")
    zs.add_argument("--history", type=int, default=50)
    zs.add_argument("--horizon", type=int, default=100)
    zs.add_argument("--stride", type=int, default=150, help="step between segment starts")
    zs.add_argument("--max-windows", type=int, default=64, help="segments per system at most")
    zs.add_argument("--out", type=Path, required=True, help="report directory")
    zs.add_argument("--threads", type=int, default=None)
    zs.set_defaults(func=cmd_eval_zero_shot)

    fs = esub.add_parser("few-shot", help="Table 2 / Fig. 6: fine-tune on a few episodes of an unseen system",
                         description="Few-shot adaptation (seed 003 Table 2, App. C.3, E): fine-tune the checkpoint on "
                                     "N episodes of an unseen system (early stopping on validation episodes), test on "
                                     "held-back episodes, and do the same from random weights. Writes few_shot.md, "
                                     "few_shot.json and few_shot_curve.png.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fs.add_argument("--corpus", type=Path, required=True)
    fs.add_argument("--checkpoint", type=Path, required=True, help="pretrained checkpoint from ws pretrain")
    fs.add_argument("--system", default="gym-pusher", help="the unseen system")
    fs.add_argument("--train-episodes", default="10", help="comma-separated fine-tuning set sizes (a curve)")
    fs.add_argument("--val-episodes", type=int, default=5)
    fs.add_argument("--test-episodes", type=int, default=5)
    _add_training_args(fs, steps=500, lr=1e-4, eval_every=50)
    fs.add_argument("--peft-blocks", type=int, default=None,
                    help="Table 11: fine-tune only the last K Sys-MoE blocks, the queries and the head")
    fs.add_argument("--out", type=Path, required=True)
    fs.set_defaults(func=cmd_eval_few_shot)

    ro = esub.add_parser("routing", help="Fig. 4: mean Sys-MoE routing weights per system",
                         description="Average WestWorld's routing weights over validation windows of each system and "
                                     "plot them per block (seed 003 Fig. 4).",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ro.add_argument("--corpus", type=Path, required=True)
    ro.add_argument("--checkpoint", type=Path, required=True)
    ro.add_argument("--systems", default="", help="systems (default: those the checkpoint was trained on)")
    ro.add_argument("--stride", type=int, default=50)
    ro.add_argument("--out", type=Path, required=True)
    ro.set_defaults(func=cmd_eval_routing)

    sc = esub.add_parser("scalability", help="Fig. 3: error against the number of pretraining environments",
                         description="Pretrain WestWorld and TrajWorld on the first N environments of the corpus "
                                     "(in ws_sim.corpus.SYSTEMS order, or --systems) with a fixed step budget per "
                                     "environment; report validation MAE/MSE averaged over those environments.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sc.add_argument("--corpus", type=Path, required=True)
    sc.add_argument("--ns", default="1,2,5,10,20", help="environment counts N")
    sc.add_argument("--systems", default="", help="environment order (default: the corpus order of SYSTEMS)")
    sc.add_argument("--steps-per-env", type=int, default=200, help="optimiser steps per environment")
    _add_training_args(sc, steps=None, lr=3e-4, eval_every=None, patience=False)
    _add_net_args(sc, experts=False)
    sc.add_argument("--out", type=Path, required=True)
    sc.set_defaults(func=cmd_eval_scalability)

    ab = esub.add_parser("ablation", help="Table 4: WestWorld without Sys-MoE / without the structural embedding",
                         description="Pretrain WestWorld, its dense ablation (one MLP of n_experts x expert_hidden "
                                     "units instead of the routed experts: a comparable parameter count) and the "
                                     "ablation without structural embedding on the same data, then run the zero-shot "
                                     "protocol on the held-out systems. Writes ablation.md/json and the zero-shot plots.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ab.add_argument("--corpus", type=Path, required=True)
    ab.add_argument("--systems", default="", help="pretraining systems (default: all but the held-out ones)")
    ab.add_argument("--eval-systems", default="", help="zero-shot systems (default: gym-hopper,gym-walker2d)")
    _add_training_args(ab, steps=2000, lr=3e-4, eval_every=200, patience=False)
    _add_net_args(ab)
    ab.add_argument("--out", type=Path, required=True)
    ab.set_defaults(func=cmd_eval_ablation)

    ct = esub.add_parser("control", help="Table 3: MPPI with each world model, pretrained and from scratch",
                         description="Seed 003 Table 3 analogue for one environment: fine-tune each pretrained "
                                     "checkpoint on the control dataset and train the same model from scratch, run "
                                     "MPPI with each (and oracle MPPI, the upper bound) on the same seeds, and "
                                     "write OUT/table3.md, table3.json and table3.png combining every environment "
                                     "run into OUT. Trained models and episodes are cached: rerunning resumes.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ct.add_argument("--env", default="hopper", help=f"environment: {envs}")
    ct.add_argument("--train", type=Path, required=True, help="control dataset (ws collect --history TH)")
    ct.add_argument("--val", type=Path, required=True, help="its validation split")
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
    _add_controller_args(ct)
    ct.set_defaults(func=cmd_eval_control)

    di = sub.add_parser("distill", help="distil a WestWorld into a small student (seed 003 App. G, eqs. 37-38)",
                        description="Train a student WestWorld (fewer Sys-MoE blocks, same bins) on a corpus with "
                                    "alpha * cross-entropy on the ground truth + (1 - alpha) * KL(teacher || student). "
                                    "Fine-tune the student on a control dataset with 'ws eval control "
                                    "--pretrained westworld=STUDENT'.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    di.add_argument("--teacher", type=Path, required=True, help="WestWorld checkpoint from ws pretrain")
    di.add_argument("--corpus", type=Path, required=True, help="corpus directory from ws corpus build")
    di.add_argument("--systems", default="", help="comma-separated systems (default: all but the held-out ones)")
    di.add_argument("--out", type=Path, required=True, help="student checkpoint path")
    di.add_argument("--blocks", type=int, default=2, help="student Sys-MoE blocks (the seed: 2)")
    di.add_argument("--d-model", type=int, default=None, help="student width (default: the teacher's)")
    di.add_argument("--expert-hidden", type=int, default=None, help="student expert width (default: the teacher's)")
    di.add_argument("--alpha", type=float, default=0.5, help="weight of the ground-truth cross-entropy (eq. 37)")
    _add_training_args(di, steps=1000, lr=1e-3, eval_every=100, stride=10, window_from="teacher")
    di.set_defaults(func=cmd_distill)

    ex = sub.add_parser("export", help="export a WestWorld to ONNX (dynamic batch) and check parity with ONNX Runtime",
                        description="Write an ONNX graph (opset 17; inputs hist_states (batch, Th, Cs) and actions "
                                    "(batch, Th+H, Ca), output pred_states (batch, H, Cs), physical units; see "
                                    "ws_distill/export.py), check it with onnx.checker, and print the largest "
                                    "difference between ONNX Runtime and PyTorch on the same inputs. MPPI runs it "
                                    "with 'ws mppi run --dynamics MODEL.onnx'.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ex.add_argument("--checkpoint", type=Path, required=True, help="WestWorld checkpoint (teacher or student)")
    ex.add_argument("--system", default="", help="system to serve (default: the checkpoint's only one)")
    ex.add_argument("--horizon", type=int, default=20, help="predicted steps H (the MPPI horizon)")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--out", type=Path, required=True, help="ONNX file")
    ex.set_defaults(func=cmd_export)

    la = sub.add_parser("launch", help="start a ROS 2 node graph (go1_sim, hopper_sim, ...) without ros2 launch",
                        description="Start the nodes of a graph defined in ws_ros/graphs.py with their parameter "
                                    "files from config/ros/, the graph 'ros2 launch worldscape <graph>.launch.py' "
                                    "starts: in this process on one executor, or with --processes as "
                                    "one process per node talking over DDS. Ctrl-C stops them all.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    la.add_argument("graph", nargs="?", default="", help="graph name (see --list)")
    la.add_argument("--list", action="store_true", help="list the graphs")
    la.add_argument("--dynamics", default="", help="override the controller's dynamics (oracle, default or a path)")
    la.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    la.add_argument("--processes", action="store_true", help="one process per node (as ros2 launch does)")
    la.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="set a parameter on every node of the graph whose parameter file declares it, e.g. "
                         "-p real_time_factor:=0.5 (repeatable)")
    la.set_defaults(func=cmd_launch)

    po = sub.add_parser("policy", help="the video-depth-action policy (PiPER manipulation)",
                        description="WorldScape Policy commands (seed 004): demonstrations, training, evaluation.")
    posub = po.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    pc = posub.add_parser("collect", help="record scripted-expert demonstrations with RGB-D video",
                          description="Run the scripted expert on a PiPER task (ws/PiperManip-v0) with domain "
                                      "randomisation and write the episodes (RGB, depth, joint states, actions, "
                                      "instruction, success) to one HDF5 file, atomically.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pc.add_argument("--task", default="pick_place", help="pick_place, push or stack")
    pc.add_argument("--episodes", type=int, default=100)
    pc.add_argument("--seed", type=int, default=0, help="episode i resets with seed+i")
    pc.add_argument("--out", type=Path, required=True, help="output .hdf5")
    pc.add_argument("--size", type=int, default=64, help="square image side, px")
    pc.add_argument("--camera", default="task", help="scene camera: task, front or scene")
    pc.add_argument("--failures", type=float, default=0.0, help="share of episodes with a deliberate expert failure")
    pc.add_argument("--no-randomize", action="store_true", help="fixed lighting and textures")
    pc.add_argument("--workspace", choices=["full", "narrow"], default="full",
                    help="where the task's objects are drawn: the whole reachable band, or the small-scale setting "
                         "(cube and target each in a 6 x 4 cm patch); kept in the file for training and evaluation")
    pc.set_defaults(func=cmd_policy_collect)
    pt = posub.add_parser("train", help="train the policy (or a baseline, or the world model) on demonstrations",
                          description="Train WorldScape Policy (seed 004: one flow-matching objective over future "
                                      "video, depth and the action chunk, plus alpha L_3D) or a baseline on the "
                                      "same demonstrations: action_only (flow matching on actions alone), "
                                      "two_stage (a video-depth world model, then a separate inverse-dynamics "
                                      "model), mot_idm (the inverse-dynamics head), world (video and depth only, "
                                      "actions unused: pretrain it, then --init the policy from it).",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pt.add_argument("--demos", required=True, help="demonstrations from 'ws policy collect' (several: comma-separated)")
    pt.add_argument("--model", default="mot", choices=["mot", "mot_idm", "action_only", "two_stage", "world"])
    pt.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    pt.add_argument("--steps", type=int, default=2000)
    pt.add_argument("--batch-size", type=int, default=32)
    pt.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW, warm-up then cosine decay)")
    pt.add_argument("--size", choices=["cpu", "gpu"], default="cpu", help="model size preset")
    pt.add_argument("--chunk", type=int, default=None, help="action chunk length L (default: the preset's)")
    pt.add_argument("--frames", type=int, default=None, help="future frames F")
    pt.add_argument("--d-model", type=int, default=None)
    pt.add_argument("--layers", type=int, default=None)
    pt.add_argument("--alpha", type=float, default=None, help="weight of L_3D")
    pt.add_argument("--action-weight", type=float, default=None,
                    help="weight of the action chunk's flow-matching term against the video and depth terms (default 1)")
    pt.add_argument("--init", type=Path, default=None,
                    help="start from this checkpoint's matching weights (with --model two_stage, a trained 'world' "
                         "checkpoint is used as stage one and only the inverse-dynamics model is trained)")
    pt.add_argument("--video-model", choices=["mot", "dit"], default="mot",
                    help="the video-depth stream of mot and world: the policy's own video and depth experts (mot) or "
                         "the video world model of 'ws worldmodel experts' (dit), sharing attention with the action "
                         "expert")
    pt.add_argument("--video-init", type=Path, default=None,
                    help="with --video-model dit: start the stream from this 'ws worldmodel experts train' checkpoint "
                         "(its sizes become the stream's)")
    pt.add_argument("--video-kind", default="joints",
                    help="with --video-model dit: the stream's control kind (its expert)")
    pt.add_argument("--obs-stream", action="store_true",
                    help="with --video-model dit: the current frame also enters at full resolution as its own stream "
                         "(the MoT's RGB and depth tokens with the Depth Positional Embedding, own weights, the same "
                         "shared attention) beside the world model's view of it")
    pt.add_argument("--keep-failures", action="store_true", help="train on failed episodes too")
    pt.add_argument("--videos", default=None,
                    help="comma-separated .hdf5 files of episodes used as videos only: every batch mixes their "
                         "windows (future video and depth terms, no action term) with the demonstrations' "
                         "(seed 004 mixes action-free video into its policy's data); mot, world and two_stage")
    pt.add_argument("--video-share", type=float, default=0.25,
                    help="with --videos: the share of each batch taken from the videos")
    pt.add_argument("--privileged", action="store_true",
                    help="diagnostic: also give the policy the simulator's object poses (tells vision from learning)")
    pt.add_argument("--eval-every", type=int, default=0, help="evaluate closed loop every this many steps (0: never)")
    pt.add_argument("--eval-episodes", type=int, default=20, help="episodes per evaluation")
    pt.add_argument("--eval-seed", type=int, default=2000, help="first seed of the evaluations")
    pt.add_argument("--eval-task", default=None, help="task to evaluate on (default: the demonstrations')")
    pt.add_argument("--target-success", type=float, default=None,
                    help="stop once an evaluation reaches this success rate (the steps it took are recorded)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--threads", type=int, default=None)
    pt.set_defaults(func=cmd_policy_train)
    pe = posub.add_parser("eval", help="closed-loop success rate of a policy on a PiPER task",
                          description="Run a policy checkpoint (or 'scripted', the expert) through the closed-loop "
                                      "executor for N seeded episodes; print the success rate with its 95% Wilson "
                                      "interval and the inference latency percentiles; write report.json and mp4s "
                                      "of a success and a failure.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pe.add_argument("--checkpoint", required=True, help="policy checkpoint, or 'scripted'")
    pe.add_argument("--task", default="pick_place")
    pe.add_argument("--episodes", type=int, default=50)
    pe.add_argument("--seed", type=int, default=1000, help="episode i resets with seed+i (demos use 0..)")
    pe.add_argument("--out", type=Path, default=None, help="report directory (default runs/policy-<task>-<time>)")
    pe.add_argument("--size", type=int, default=64, help="image size for 'scripted' (a checkpoint knows its own)")
    pe.add_argument("--workspace", choices=["full", "narrow"], default=None,
                    help="object placement (default: the checkpoint's demonstrations'; 'full' for 'scripted')")
    pe.add_argument("--replan-every", type=int, default=None, help="steps between chunks (default: half a chunk)")
    pe.add_argument("--latency", default="measured", help="'measured' (inference time in control steps) or steps")
    pe.add_argument("--ensemble-m", type=float, default=0.1, help="temporal-ensembling rate")
    pe.add_argument("--no-ensemble", action="store_true", help="newest chunk only")
    pe.add_argument("--euler-steps", type=int, default=None, help="flow-matching sampling steps")
    pe.add_argument("--no-video", action="store_true")
    pe.add_argument("--demos", default=None,
                    help="also report the chunks' offline error against these recorded episodes (vs holding still)")
    pe.add_argument("--indicator", choices=sorted(_INDICATORS), default="improvement",
                    help="what an advantage-conditioned policy (ws hitl dagger/retrain) is asked for: 'improvement' "
                         "is deployment; 'not-improvement' and 'unknown' (the unconditioned policy) show how much it "
                         "reads its indicator")
    pe.add_argument("--threads", type=int, default=None)
    pe.set_defaults(func=cmd_policy_eval)

    tk = sub.add_parser("teleop", help="drive the PiPER from the keyboard (teleop/joy for the teleop node)",
                        description="Publish the terminal's keys as sensor_msgs/Joy on teleop/joy, the message a "
                                    "gamepad gives through the joy package, for the 'teleop' node (run a graph with "
                                    "it, e.g. 'ws launch piper_hitl_sim -p checkpoint:=policy.pt', in another "
                                    "terminal). Space takes over from the policy and hands back; w/s a/d r/f move "
                                    "the tool; o/c open and close the gripper; t/y/n mark episode start, success, "
                                    "failure.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tk.add_argument("--rate", type=float, default=20.0, help="Joy messages per second, Hz")
    tk.add_argument("--hold", type=float, default=0.3,
                    help="a key counts as held this long after its last press or auto-repeat, s")
    tk.set_defaults(func=cmd_teleop)

    hi = sub.add_parser("hitl", help="human-in-the-loop: recordings to training data",
                        description="Human-in-the-loop commands (seed 004, Innovation 3).")
    hisub = hi.add_subparsers(dest="hitl_command", required=True, metavar="SUBCOMMAND")
    hc = hisub.add_parser("convert", help="MCAP recordings -> policy training episodes (who acted kept per step)",
                          description="Cut correction_recorder MCAP files into episodes at their 'episode' events "
                                      "(start, success/failure), one step per joint_command, and write them as a "
                                      "demonstration file for 'ws policy train' (with a per-step 'actor': 1 human, "
                                      "0 policy). Truncated files (a killed recorder) are read up to their last "
                                      "chunk.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hc.add_argument("recordings", nargs="+", type=Path, help=".mcap files")
    hc.add_argument("--out", type=Path, required=True, help="output .hdf5")
    hc.add_argument("--task", default=None, help="task name (default: the recording's)")
    hc.set_defaults(func=cmd_hitl_convert)
    hd = hisub.add_parser("dagger", help="HG-DAgger in simulation with advantage conditioning (seed 004)",
                          description="Human-in-the-loop learning in simulation: the policy runs, the scripted "
                                      "expert stands in for the teleoperator and takes over when the policy heads off "
                                      "its plan, stalls or holds the gripper wrong (HG-DAgger gating), the data "
                                      "aggregate, a progress "
                                      "value function is fitted, actions are labelled improvements where their "
                                      "advantage is positive or a human acted, and the policy is fine-tuned "
                                      "conditioned on that indicator (runs with it set). Each round's policy is "
                                      "evaluated autonomously on the same seeds. Writes report.json, dagger.png, "
                                      "aggregate.hdf5 and round<N>.pt under --out-dir.",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hd.add_argument("--init", type=Path, required=True, help="starting policy ('ws policy train' checkpoint)")
    hd.add_argument("--demos", required=True, help="the demonstrations it was trained on (comma-separated files)")
    hd.add_argument("--rounds", type=int, default=3)
    hd.add_argument("--episodes-per-round", type=int, default=20, help="gated rollouts per round")
    hd.add_argument("--autonomous-per-round", type=int, default=0,
                    help="rollouts of the policy alone (no expert) added to the aggregate each round, successes "
                         "and failures alike, as on-policy data for the value and the indicator")
    hd.add_argument("--eval-episodes", type=int, default=20, help="autonomous evaluation episodes per round")
    hd.add_argument("--eval-seed", type=int, default=1000)
    hd.add_argument("--rollout-seed", type=int, default=5000, help="first seed of the rollouts")
    _add_retrain_args(hd, "per round")
    hd.add_argument("--drift", type=float, default=0.03,
                    help="the expert takes over when the policy's tool target is this far from its plan, m")
    hd.add_argument("--min-expert-steps", type=int, default=8, help="steps the expert keeps control once taken")
    hd.add_argument("--stall-steps", type=int, default=40,
                    help="the expert takes over when the tool gains less than 1 cm on its next waypoint in this many steps")
    hd.add_argument("--grip-steps", type=int, default=20,
                    help="the expert takes over when the policy holds the gripper against its plan this many steps")
    hd.add_argument("--reach", type=float, default=0.02,
                    help="while shadowing, the expert's plan moves on when the tool comes this close to a waypoint, m")
    hd.add_argument("--latency", type=int, default=1, help="simulated inference latency, control steps")
    hd.add_argument("--compare-bc", action="store_true",
                    help="also train, from the starting policy on the final aggregate for steps x rounds, plain "
                         "behaviour cloning, behaviour cloning on the successful episodes (filtered BC) and (unless "
                         "--plain-bc) the advantage-conditioned policy, and evaluate each")
    hd.add_argument("--out-dir", type=Path, default=Path("runs/dagger"))
    hd.set_defaults(func=cmd_hitl_dagger)
    hrt = hisub.add_parser("retrain", help="one retraining on an aggregate: advantage-conditioned or plain BC",
                           description="Fine-tune a policy once on aggregated episodes (a 'ws hitl dagger' "
                                       "aggregate.hdf5, converted recordings, demonstrations; comma-separated): fit "
                                       "the progress value, label each policy step an improvement where its "
                                       "advantage is positive or a human acted, and train conditioned on that "
                                       "indicator; or, with --plain-bc, behaviour cloning on every step. The same "
                                       "retraining 'ws hitl dagger --compare-bc' does at its end; evaluate the "
                                       "result with 'ws policy eval' (--indicator asks a conditioned policy for "
                                       "another indicator).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hrt.add_argument("--init", type=Path, required=True, help="starting policy ('ws policy train' checkpoint)")
    hrt.add_argument("--aggregate", required=True, help="episodes to train on (comma-separated .hdf5 files)")
    hrt.add_argument("--out", type=Path, required=True, help="output checkpoint")
    _add_retrain_args(hrt, "")
    hrt.set_defaults(func=cmd_hitl_retrain)
    hr = hisub.add_parser("recover", help="rewrite a truncated recording (killed recorder) as a complete MCAP file",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hr.add_argument("recording", type=Path)
    hr.add_argument("--out", type=Path, required=True)
    hr.set_defaults(func=cmd_hitl_recover)

    m = sub.add_parser("mppi", help="MPPI control", description="MPPI control commands.")
    msub = m.add_subparsers(dest="mppi_command", required=True, metavar="SUBCOMMAND")
    r = msub.add_parser("run", help="run MPPI closed loop and write a report",
                        description="Run MPPI closed loop in a Gymnasium environment. Prints per-episode accumulated "
                                    "reward, length and planner latency (median, p99) for each controller on the "
                                    "same seeds, and writes report.json, report.png and an mp4 of the first "
                                    "episode of the first controller to --out.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--env", default="hopper", help=f"environment: {envs}")
    r.add_argument("--dynamics", default="default",
                   help="'default' (the checkpoint shipped for this env), a checkpoint path, 'oracle' or 'zero'")
    r.add_argument("--compare", default="oracle,zero",
                   help="comma-separated controllers run on the same seeds after --dynamics ('' for none)")
    r.add_argument("--episodes", type=int, default=3, help="episodes per controller")
    r.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    r.add_argument("--seed", type=int, default=0, help="episode i resets with seed+i")
    r.add_argument("--out", type=Path, default=None, help="report directory (default runs/mppi-<env>-<time>)")
    r.add_argument("--no-video", action="store_true", help="skip rendering the mp4")
    _add_controller_args(r)
    r.set_defaults(func=cmd_mppi_run)

    xp = sub.add_parser("expert", help="Hopper/Walker2d expert policies trained with stable-baselines3",
                        description="Expert policies for the MPPI reference (D4RL cannot be downloaded here): "
                                    "train with stable-baselines3, export what MPPI needs, evaluate the export.")
    xsub = xp.add_subparsers(dest="expert_command", required=True, metavar="SUBCOMMAND")
    xt = xsub.add_parser("train", help="train TD3/SAC in chunks, checkpointing after each (resumable)",
                         description="Train an expert with stable-baselines3 (rl-baselines3-zoo's MuJoCo "
                                     "hyper-parameters) until --steps environment steps. After every --chunk steps "
                                     "it evaluates 5 deterministic episodes, appends to OUT/curve.csv (+ curve.png) "
                                     "and checkpoints OUT (weights, optimizers, replay buffer; no pickled code). "
                                     "RESUMING: run the same command again with the same --out and it continues "
                                     "from the last checkpoint (a kill loses at most one chunk); a larger --steps "
                                     "extends a finished run. TD3 runs about 70 steps/s on one core (~4 h per 1M).",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    xt.add_argument("--env", choices=["hopper", "walker2d"], default="hopper", help="Hopper-v5 or Walker2d-v5")
    xt.add_argument("--algo", choices=["td3", "sac"], default="td3", help="stable-baselines3 algorithm")
    xt.add_argument("--steps", type=int, default=1_000_000, help="total environment steps (target)")
    xt.add_argument("--out", type=Path, required=True, help="run directory (resumes if it holds a run)")
    xt.add_argument("--seed", type=int, default=0, help="training seed (must match to resume)")
    xt.add_argument("--chunk", type=int, default=25_000, help="steps between evaluation + checkpoint")
    xt.add_argument("--eval-episodes", type=int, default=5, help="deterministic episodes per evaluation")
    xt.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    xt.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    xt.set_defaults(func=cmd_expert_train)
    xe = xsub.add_parser("export", help="roll out a trained expert and write the shipped files",
                         description="Roll the run's deterministic policy out in MuJoCo (episode i resets with "
                                     "seed+i) and write actor.pt (weights, loadable without SB3), episodes.npz "
                                     "([qpos, qvel] states, actions, rewards; action mean/variance), reference.npz "
                                     "(episode 0, for 'ws mppi run --reference'), expert.json (commands, steps, "
                                     "training time, machine, returns) and the learning curve.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    xe.add_argument("--run", type=Path, required=True, help="run directory of 'ws expert train'")
    xe.add_argument("--episodes", type=int, default=5, help="reference episodes (= evaluation seeds)")
    xe.add_argument("--seed", type=int, default=20_000, help="episode i resets with seed+i")
    xe.add_argument("--which", choices=["best", "last"], default="best",
                    help="the checkpoint with the best evaluation during training, or the last one")
    xe.add_argument("--out", type=Path, default=None, help="output directory (default: ws_mppi/experts/<env>)")
    xe.set_defaults(func=cmd_expert_export)
    xv = xsub.add_parser("eval", help="returns of an exported expert (plain PyTorch, no SB3)",
                         description="Roll an exported expert out deterministically in MuJoCo and print the returns.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    xv.add_argument("--expert", default="hopper", help="a shipped expert (hopper, walker2d), its directory or actor.pt")
    xv.add_argument("--episodes", type=int, default=5, help="episodes")
    xv.add_argument("--seed", type=int, default=20_000, help="episode i resets with seed+i")
    xv.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    xv.set_defaults(func=cmd_expert_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    _headless_gl()  # before anything imports mujoco: it picks its OpenGL backend at import time
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("ws", "ws_mppi", "ws_worldmodel", "ws_sim"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        print(f"ws: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ws: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
