"""``ws collect`` (oracle-MPPI dynamics datasets) and ``ws corpus build`` (the multi-system
pretraining corpus)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import add_seed, add_threads, command, environments, group, headless_gl, set_threads, split_list
from .mppi import add_controller_args, controller_config


def cmd_collect(args) -> int:
    """Collect an oracle-MPPI dataset and write its train and validation splits."""
    from ws_mppi.collect import CollectConfig, collect
    from ws_mppi.report import resolve_dynamics
    from ws_sim.dataset import write_dataset
    from ws_sim.envs import make_env

    env = make_env(args.env, max_episode_steps=args.max_steps)
    args.dynamics = resolve_dynamics(env.name, args.dynamics)
    nthread = set_threads(args.threads)
    ccfg = CollectConfig(train_episodes=args.train_episodes, full_episodes=args.full_episodes,
                         val_episodes=args.val_episodes, keep_train=args.keep_train, keep_val=args.keep_val,
                         max_steps=args.max_steps, seed=args.seed, history=args.history, dynamics=args.dynamics)
    env_for_seed = None
    if args.randomise:
        from ws_mppi.config import ConfigError
        from ws_mppi.collect import randomised_go1_episodes

        if env.name != "go1":
            raise ConfigError(f"--randomise draws the Go1's sim-to-real physics; --env {args.env} has none")
        env_for_seed = randomised_go1_episodes(max_episode_steps=args.max_steps)
    train, val, stats = collect(env, ccfg, controller_config(args), nthread=nthread, env_for_seed=env_for_seed)
    suffix = ".hdf5" if args.format == "hdf5" else ""
    out = Path(args.out)
    tp = write_dataset(train, out / f"train{suffix}", args.format)
    vp = write_dataset(val, out / f"val{suffix}", args.format)
    print(f"wrote {tp} ({len(train)} transitions in {train.num_segments} segments)")
    print(f"wrote {vp} ({len(val)} transitions in {val.num_segments} segments)")
    print(f"{'oracle' if args.dynamics == 'oracle' else 'planner'} episode returns: "
          f"{[round(r, 1) for r in stats['oracle_returns_train'] + stats['oracle_returns_full']]}")
    return 0


def cmd_perturbed_replays(args) -> int:
    """Replay a dataset's segments in MuJoCo with perturbed actions and write them (with the original)."""
    from ws_mppi.collect import perturbed_replays
    from ws_sim.dataset import read_dataset, write_dataset
    from ws_sim.envs import make_env

    nthread = set_threads(args.threads)
    env = make_env(args.env)
    data = read_dataset(args.data)
    history = args.history
    if history is None:
        history = int(data.attrs.get("collect", {}).get("history", 0))
    out = perturbed_replays(data, env, args.action_noise, history=history, segments=args.segments, seed=args.seed,
                            include_original=not args.replays_only, nthread=nthread)
    path = write_dataset(out, args.out)
    print(f"wrote {path} ({len(out)} transitions in {out.num_segments} segments: "
          f"{out.attrs['perturbed_replays']['segments']} replayed with actions perturbed by {args.action_noise:g} half "
          f"control ranges after {history} executed steps{'' if args.replays_only else ', after the original data'})")
    return 0


def cmd_corpus_build(args) -> int:
    """Generate (or resume) the pretraining corpus, shard by shard."""
    from ws_sim.corpus import HELD_OUT_FEW_SHOT, HELD_OUT_ZERO_SHOT, SYSTEMS, build_corpus

    headless_gl()
    systems = list(SYSTEMS) if args.systems == "all" else split_list(args.systems)
    manifest = build_corpus(args.out, systems, args.episodes, seed=args.seed, episodes_per_shard=args.episodes_per_shard,
                            workers=args.workers, behaviours=tuple(args.behaviours.split(",")), steps=args.steps,
                            mppi_factory="ws_mppi.collect:corpus_mppi_policy")
    print(f"corpus {args.out}: {len(manifest['systems'])} systems; held out of pretraining: "
          f"zero-shot {list(HELD_OUT_ZERO_SHOT)}, few-shot {list(HELD_OUT_FEW_SHOT)}")
    return 0


def add_collect(sub) -> None:
    """``ws collect``."""
    c = command(sub, "collect", cmd_collect, help="collect an oracle-MPPI dynamics dataset (seed 003, App. C.5)",
                description="Run oracle MPPI (MuJoCo as the model) and keep the lowest-cost sampled rollouts "
                            "of every step as training segments (plus all samples of a few extra episodes); "
                            "validation from other seeds. Writes OUT/train and OUT/val. With --dynamics CHECKPOINT "
                            "the planner plans with that learned model instead and the sequences it ranks best are "
                            "re-simulated in MuJoCo: data where the model's own planner goes, to add to its training "
                            "set ('ws train --train OLD NEW --init CHECKPOINT').")
    c.add_argument("--env", default="hopper", help=f"environment: {environments()}")
    c.add_argument("--out", type=Path, required=True, help="output directory")
    c.add_argument("--format", choices=["hdf5", "minari"], default="hdf5", help="D4RL-style HDF5 or Minari")
    c.add_argument("--train-episodes", type=int, default=10, help="episodes keeping the lowest-cost fraction")
    c.add_argument("--full-episodes", type=int, default=2, help="extra episodes keeping every sampled rollout")
    c.add_argument("--val-episodes", type=int, default=3, help="validation episodes (other seeds)")
    c.add_argument("--keep-train", type=float, default=0.1, help="fraction of rollouts kept per step (train)")
    c.add_argument("--keep-val", type=float, default=0.3, help="fraction of rollouts kept per step (val)")
    c.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
    add_seed(c, "first episode seed (episodes use seed, seed+1, ...)")
    c.add_argument("--history", type=int, default=0,
                   help="prefix each kept rollout with this many executed steps (for trajectory world models "
                        "that plan from a history: WestWorld, TrajWorld, TDM)")
    c.add_argument("--randomise", action="store_true",
                   help="Go1 only: each episode on its own draw of the sim-to-real ranges (latency, PD gains, joint "
                        "damping and friction, trunk mass and centre of mass, ground friction; "
                        "ws_sim.randomisation.Go1Randomisation), the oracle planning with that episode's physics; "
                        "the draws never repeat those of 'ws mppi randomised'")
    c.add_argument("--dynamics", default="oracle",
                   help="what the planner plans with: 'oracle' (MuJoCo), or a learned-model checkpoint ('default': the "
                        "one shipped for --env), whose kept "
                        "action sequences MuJoCo then re-simulates from the true state (the data hold the "
                        "simulator's states, never the model's predictions)")
    add_controller_args(c)

    r = command(sub, "perturbed-replays", cmd_perturbed_replays,
                help="replay a dynamics dataset's segments in MuJoCo with perturbed actions (action diversity)",
                description="A planner's data let a trajectory model predict the future from the history alone, "
                            "ignoring the actions (ws eval open-loop --action-noise measures it). This keeps each "
                            "segment's executed history, perturbs the actions after it with Gaussian noise, and "
                            "lets MuJoCo say what follows (cut after the first unhealthy state, the task's "
                            "rewards): every transition is the simulator's. Writes the original data followed by "
                            "the replays (--replays-only: the replays) to --out, ready for ws eval control --train "
                            "or ws train --train.")
    r.add_argument("--env", default="hopper", help=f"environment that made the data: {environments()}")
    r.add_argument("--data", type=Path, required=True, help="full-state dataset (ws collect's train split)")
    r.add_argument("--out", type=Path, required=True, help="output dataset (.hdf5, or a directory for Minari)")
    r.add_argument("--action-noise", type=float, default=0.3, help="noise standard deviation in half control ranges")
    r.add_argument("--history", type=int, default=None,
                   help="executed steps kept unperturbed at the start of each segment (default: the data's "
                        "ws collect --history)")
    r.add_argument("--segments", type=int, default=None, help="segments replayed, drawn at random (default: all)")
    r.add_argument("--replays-only", action="store_true", help="write only the replays, not the original data first")
    add_seed(r, "random seed of the draw and the noise")
    add_threads(r)


def add_corpus(sub) -> None:
    """``ws corpus build``."""
    csub = group(sub, "corpus", help="multi-system pretraining corpus", description="Pretraining corpus commands.")
    cb = command(csub, "build", cmd_corpus_build,
                 help="generate trajectories from dm_control and Gymnasium systems (resumable)",
                 description="Roll out dm_control suite domains and Gymnasium MuJoCo environments with a mix of "
                             "random, coloured-noise (pink, red) and oracle-MPPI behaviours, storing the full "
                             "MuJoCo state. Work is cut into shards written atomically as OUT/<system>/shard_NNN.hdf5; "
                             "run the same command again to resume after an interruption. gym-hopper and "
                             "gym-walker2d (zero-shot) and gym-pusher (few-shot) are built too but held out of "
                             "pretraining.")
    cb.add_argument("--out", type=Path, required=True, help="corpus directory")
    cb.add_argument("--systems", default="all", help="comma-separated system names, or 'all' (see ws_sim.corpus.SYSTEMS)")
    cb.add_argument("--episodes", type=int, default=20, help="episodes per system")
    cb.add_argument("--episodes-per-shard", type=int, default=5, help="episodes per shard (resume/parallel unit)")
    cb.add_argument("--steps", type=int, default=None, help="episode length (default: each system's, 500 or 1000)")
    cb.add_argument("--behaviours", default="random,pink,red,mppi", help="behaviour mix drawn per episode")
    cb.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="worker processes")
    add_seed(cb)
