"""``ws mppi run``: MPPI closed loop with oracle, learned or zero dynamics; and the controller
options that ``ws collect`` and ``ws eval control`` share with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import command, config_errors, environments, group, headless_gl, set_threads, split_list


def add_controller_args(p: argparse.ArgumentParser, learned: bool = True) -> None:
    """The controller YAML and its overrides (:func:`controller_config`); ``learned``: the command
    may plan with a learned model (``--model-precision``)."""
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
    if learned:
        p.add_argument("--model-precision", choices=["float32", "bfloat16"], default=None,
                       help="precision of a learned MLPEnsemble's matmuls in the rollouts (bfloat16: about twice as "
                            "fast at K >= 256 on CPUs with AVX512-BF16 or AMX, no faster at small K; states kept in "
                            "float32; default: the config's, float32)")
        p.add_argument("--disagreement-weight", type=float, default=None,
                       help="a learned MLPEnsemble's rollouts pay this times the summed variance of its elites' "
                            "normalised predictions, keeping the plan where the model's data were (default: the "
                            "config's disagreement_weight, 0: off)")
    p.add_argument("--healthy-margin", type=float, nargs=2, default=None, metavar=("DZ", "DANGLE"),
                   help="Hopper/Walker2d: bands of DZ metres and DANGLE radians inside each end of Gymnasium's healthy "
                        "torso height and pitch ranges, where a planned state pays --healthy-margin-weight x its "
                        "squared depth into the band (0 to 1), a buffer for a learned model's error (default: the "
                        "config's healthy_margin)")
    p.add_argument("--healthy-margin-weight", type=float, default=None, metavar="W",
                   help="the cost per step at the end of a --healthy-margin band (default: the config's "
                        "healthy_margin_weight, 0: off)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and oracle rollouts (default: all)")


def controller_config(args):
    """The controller config of ``--config`` (or ``--env``'s built-in one) with the overrides of
    :func:`add_controller_args` applied and checked (ConfigError)."""
    from ws_mppi.config import check_disagreement_weight, default_config, load_config
    from ws_mppi.costs import check_healthy_margin, check_healthy_margin_weight

    cfg = load_config(args.config) if args.config else default_config(args.env)
    if args.horizon is not None:
        cfg.mppi.horizon = args.horizon
    if args.samples is not None:
        cfg.mppi.samples = args.samples
    if args.temperature is not None:
        cfg.mppi.temperature = args.temperature
    if args.reference is not None:
        cfg.reference = str(args.reference)
    if getattr(args, "model_precision", None) is not None:
        cfg.model_precision = args.model_precision
    if getattr(args, "disagreement_weight", None) is not None:
        cfg.disagreement_weight = args.disagreement_weight
    if getattr(args, "healthy_margin", None) is not None:
        cfg.healthy_margin = args.healthy_margin
    if getattr(args, "healthy_margin_weight", None) is not None:
        cfg.healthy_margin_weight = args.healthy_margin_weight
    with config_errors():
        check_disagreement_weight(cfg.disagreement_weight)
        cfg.healthy_margin = list(check_healthy_margin(cfg.healthy_margin))
        cfg.healthy_margin_weight = check_healthy_margin_weight(cfg.healthy_margin_weight)
        cfg.mppi.__post_init__()  # the overrides bypassed the config's own checks
    return cfg


def cmd_mppi_run(args) -> int:
    """Run MPPI closed loop with each controller on the same seeds and write the report."""
    from ws_mppi.report import run_comparison

    headless_gl()
    nthread = set_threads(args.threads)
    cfg = controller_config(args)
    if args.no_termination:
        from ws_sim.envs import make_env

        with config_errors():
            make_env(args.env, terminate_when_unhealthy=False).close()
    primary = args.dynamics
    compare = [c for c in split_list(args.compare) if c != primary]
    run_comparison(env_name=args.env, controllers=[primary] + compare, config=cfg, episodes=args.episodes,
                   seed=args.seed, max_steps=args.max_steps, out_dir=args.out, video=not args.no_video,
                   nthread=nthread, terminate_when_unhealthy=not args.no_termination)
    return 0


def _go1_evaluation(args, what: str) -> tuple[int | None, object, list[int]]:
    """The Go1 evaluations' common start: ``(threads, controller config, seeds)``.

    Raises:
        ConfigError: another robot than the Go1, or seeds that are not integers."""
    from ws_mppi.config import ConfigError

    if args.env != "go1":
        raise ConfigError(f"{what} is for the legged robot (--env go1), not {args.env}")
    headless_gl()
    nthread = set_threads(args.threads)
    cfg = controller_config(args)
    with config_errors():
        seeds = [int(s) for s in split_list(args.seeds)]
    return nthread, cfg, seeds


def cmd_mppi_estimate(args) -> int:
    """Walk the Go1 with MPPI on its true state and on the state estimated from its own sensors."""
    import json

    from ws_mppi.estimation import evaluate
    from ws_mppi.report import resolve_dynamics
    from ws_mppi.runner import make_controller
    from ws_sim.envs import make_env

    nthread, cfg, seeds = _go1_evaluation(args, "base state estimation")
    env = make_env(args.env)
    with config_errors():
        dynamics = resolve_dynamics(args.env, args.dynamics)
        make_controller(env, dynamics, cfg, seed=0, nthread=nthread).close()  # bad settings fail before walking
    out = args.out or Path("runs") / "estimate-go1"
    summary = evaluate(lambda: make_controller(env, dynamics, cfg, seed=0, nthread=nthread), env, seeds,
                       args.seconds, out, ideal=args.ideal_sensors)
    print(json.dumps(summary))
    print(f"wrote {Path(out) / 'estimation.json'} and estimation.png")
    return 0


def cmd_mppi_randomised(args) -> int:
    """MPPI on the Go1 with the evaluation simulator's physics randomised (the sim-to-real gap)."""
    import json

    from ws_mppi.config import ConfigError
    from ws_mppi.report import resolve_dynamics
    from ws_mppi.runner import make_controller
    from ws_mppi.sim_to_real import evaluate

    nthread, cfg, seeds = _go1_evaluation(args, "the randomised evaluation")
    with config_errors():
        dynamics = {d: resolve_dynamics("go1", d) for d in split_list(args.dynamics)}
    if not dynamics:
        raise ConfigError("--dynamics names no controller")
    controllers = {label: (lambda env, nominal, path=path: make_controller(env, path, cfg, seed=0, nthread=nthread,
                                                                           oracle_model=nominal))
                   for label, path in dynamics.items()}
    out = args.out or Path("runs") / "randomised-go1"
    summary = evaluate(controllers, seeds, args.seconds, out_dir=out, on_estimate=args.on_estimate)
    for label, kinds in summary["controllers"].items():
        for kind, row in kinds.items():
            print(f"{label:<10} {kind:<10} progress {row['progress_m'][0]:6.2f} ± {row['progress_m'][1]:.2f} m "
                  f"in {args.seconds:g} s, falls {row['falls']} of {row['walks']}")
    print(json.dumps({k: {kk: {"progress_m": vv["progress_m"], "falls": vv["falls"]} for kk, vv in v.items()}
                      for k, v in summary["controllers"].items()}))
    print(f"wrote {Path(out) / 'randomised.json'}")
    return 0


def add_mppi(sub) -> None:
    """``ws mppi run``."""
    msub = group(sub, "mppi", help="MPPI control", description="MPPI control commands.")
    r = command(msub, "run", cmd_mppi_run, help="run MPPI closed loop and write a report",
                description="Run MPPI closed loop in a Gymnasium environment. Prints per-episode accumulated "
                            "reward, length and planner latency (median, p99) for each controller on the "
                            "same seeds, and writes report.json, report.png and an mp4 of the first "
                            "episode of the first controller to --out.")
    r.add_argument("--env", default="hopper", help=f"environment: {environments()}")
    r.add_argument("--dynamics", default="default",
                   help="'default' (the checkpoint shipped for this env), a checkpoint path, 'oracle' or 'zero'")
    r.add_argument("--compare", default="oracle,zero",
                   help="comma-separated controllers run on the same seeds after --dynamics ('' for none)")
    r.add_argument("--episodes", type=int, default=3, help="episodes per controller")
    r.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    r.add_argument("--seed", type=int, default=0, help="episode i resets with seed+i")
    r.add_argument("--out", type=Path, default=None, help="report directory (default runs/mppi-<env>-<time>)")
    r.add_argument("--no-video", action="store_true", help="skip rendering the mp4")
    r.add_argument("--no-termination", action="store_true",
                   help="Hopper/Walker2d: episodes go on to --max-steps after a fall (Gymnasium's "
                        "terminate_when_unhealthy=False; seed 003's protocol for its Table 3, where a fallen robot "
                        "keeps earning its forward reward); report.json records it")
    add_controller_args(r)

    e = command(msub, "estimate", cmd_mppi_estimate,
                help="the Go1's base state from its IMU, encoders and joint efforts, measured while MPPI walks",
                description="Per seed, walk the Go1 with MPPI twice: on the simulator's true state, with the base "
                            "state estimator (IMU + leg kinematics linear Kalman filter, ws_sim.estimator) running "
                            "alongside on simulated sensor readings (IMU noise, biases and heading drift, encoder and "
                            "effort noise; feet standing where the joint efforts push them down), and on the "
                            "estimated state. Prints and writes (estimation.json, estimation.png) the estimate's "
                            "base velocity RMSE, height error and heading drift, and the forward progress on the "
                            "estimate against on the truth, mean and std over seeds.")
    e.add_argument("--env", default="go1", help="go1 (the only floating-base robot walked here)")
    e.add_argument("--dynamics", default="default",
                   help="'default' (the shipped Go1 model), a checkpoint path or 'oracle'")
    e.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated episode seeds")
    e.add_argument("--seconds", type=float, default=20.0, help="walk length per episode")
    e.add_argument("--ideal-sensors", action="store_true", help="noiseless IMU and encoders")
    e.add_argument("--out", type=Path, default=None, help="report directory (default runs/estimate-go1)")
    add_controller_args(e)

    rz = command(msub, "randomised", cmd_mppi_randomised,
                 help="MPPI on the Go1 with the simulator's physics randomised as hardware differs",
                 description="Per seed, walk the Go1 with each controller on the nominal model and on one with "
                             "randomised physics (ws_sim.randomisation: actuator latency 0-20 ms, PD gains +-20 %, "
                             "joint damping and friction, trunk mass +-1 kg and centre of mass +-2 cm, ground "
                             "friction 0.4-1.0; seed s draws them). The planner knows only the nominal model (the "
                             "oracle plans with the MJCF's values). Prints and writes randomised.json: forward "
                             "progress (mean and std over seeds) and falls.")
    rz.add_argument("--env", default="go1", help="go1")
    rz.add_argument("--dynamics", default="default,oracle",
                    help="comma-separated controllers: 'default' (the shipped model), 'oracle' (of the nominal "
                         "model) or checkpoint paths")
    rz.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (episode and physics draw)")
    rz.add_argument("--seconds", type=float, default=10.0, help="walk length per episode")
    rz.add_argument("--on-estimate", action="store_true",
                    help="plan on the state estimated from simulated IMU (biases drawn per walk), encoder and effort "
                         "readings (ws mppi estimate's), not on the true state")
    rz.add_argument("--out", type=Path, default=None, help="report directory (default runs/randomised-go1)")
    add_controller_args(rz)
