"""``ws expert train|export|eval``: Hopper/Walker2d expert policies (stable-baselines3) for the
MPPI reference."""

from __future__ import annotations

import json
from pathlib import Path

from .common import add_device, add_seed, command, group


def cmd_expert_train(args) -> int:
    """Train (or resume) an expert in chunks, checkpointing after each."""
    from ws_mppi.expert import train_expert

    st = train_expert(args.env, args.out, args.steps, algo=args.algo, seed=args.seed, chunk_steps=args.chunk,
                      threads=args.threads, progress=not args.no_progress, eval_episodes=args.eval_episodes,
                      device=args.device)
    last = st["curve"][-1] if st["curve"] else {}
    print(json.dumps({"run": str(args.out), "steps": st["num_timesteps"], "wall_h": round(st["wall_s"] / 3600, 3),
                      "last_return": last.get("mean_return"), "best": st["best"],
                      "curve": str(args.out / "curve.csv")}))
    return 0


def cmd_expert_export(args) -> int:
    """Roll a trained expert out and write the files MPPI reads."""
    from ws_mppi.expert import export_reference

    files = export_reference(args.run, args.out, n_episodes=args.episodes, seed=args.seed, which=args.which)
    meta = json.loads((files[0].parent / "expert.json").read_text())
    print(json.dumps({"out": str(files[0].parent), "files": [f.name for f in files],
                      "bytes": sum(f.stat().st_size for f in files), "returns": meta["returns"],
                      "return_mean": meta["return_mean"], "return_std": meta["return_std"]}))
    return 0


def cmd_expert_eval(args) -> int:
    """Print the returns of an exported expert's deterministic episodes."""
    import numpy as np

    from ws_mppi.expert import evaluate_expert

    eps = evaluate_expert(args.expert, episodes=args.episodes, seed=args.seed, max_steps=args.max_steps)
    r = np.array([e["return"] for e in eps])
    print(json.dumps({"expert": str(args.expert), "seeds": [e["seed"] for e in eps],
                      "returns": [round(float(x), 2) for x in r], "lengths": [e["length"] for e in eps],
                      "return_mean": round(float(r.mean()), 2),
                      "return_std": round(float(r.std(ddof=1)) if len(r) > 1 else 0.0, 2)}))
    return 0


def add_expert(sub) -> None:
    """``ws expert train|export|eval``."""
    xsub = group(sub, "expert", help="Hopper/Walker2d expert policies trained with stable-baselines3",
                 description="Expert policies for the MPPI reference (D4RL cannot be downloaded here): "
                             "train with stable-baselines3, export what MPPI needs, evaluate the export.")
    xt = command(xsub, "train", cmd_expert_train, help="train TD3/SAC in chunks, checkpointing after each (resumable)",
                 description="Train an expert with stable-baselines3 (rl-baselines3-zoo's MuJoCo "
                             "hyper-parameters) until --steps environment steps. After every --chunk steps "
                             "it evaluates 5 deterministic episodes, appends to OUT/curve.csv (+ curve.png) "
                             "and checkpoints OUT (weights, optimizers, replay buffer; no pickled code). "
                             "RESUMING: run the same command again with the same --out and it continues "
                             "from the last checkpoint (a kill loses at most one chunk); a larger --steps "
                             "extends a finished run. TD3 runs about 70 steps/s on one core (~4 h per 1M).")
    xt.add_argument("--env", choices=["hopper", "walker2d"], default="hopper", help="Hopper-v5 or Walker2d-v5")
    xt.add_argument("--algo", choices=["td3", "sac"], default="td3", help="stable-baselines3 algorithm")
    xt.add_argument("--steps", type=int, default=1_000_000, help="total environment steps (target)")
    xt.add_argument("--out", type=Path, required=True, help="run directory (resumes if it holds a run)")
    add_seed(xt, "training seed (must match to resume)")
    xt.add_argument("--chunk", type=int, default=25_000, help="steps between evaluation + checkpoint")
    xt.add_argument("--eval-episodes", type=int, default=5, help="deterministic episodes per evaluation")
    xt.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_device(xt)
    xt.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    xe = command(xsub, "export", cmd_expert_export, help="roll out a trained expert and write the shipped files",
                 description="Roll the run's deterministic policy out in MuJoCo (episode i resets with "
                             "seed+i) and write actor.pt (weights, loadable without SB3), episodes.npz "
                             "([qpos, qvel] states, actions, rewards; action mean/variance), reference.npz "
                             "(episode 0, for 'ws mppi run --reference'), expert.json (commands, steps, "
                             "training time, machine, returns) and the learning curve.")
    xe.add_argument("--run", type=Path, required=True, help="run directory of 'ws expert train'")
    xe.add_argument("--episodes", type=int, default=5, help="reference episodes (= evaluation seeds)")
    add_seed(xe, "episode i resets with seed+i", default=20_000)
    xe.add_argument("--which", choices=["best", "last"], default="best",
                    help="the checkpoint with the best evaluation during training, or the last one")
    xe.add_argument("--out", type=Path, default=None, help="output directory (default: ws_mppi/experts/<env>)")
    xv = command(xsub, "eval", cmd_expert_eval, help="returns of an exported expert (plain PyTorch, no SB3)",
                 description="Roll an exported expert out deterministically in MuJoCo and print the returns.")
    xv.add_argument("--expert", default="hopper", help="a shipped expert (hopper, walker2d), its directory or actor.pt")
    xv.add_argument("--episodes", type=int, default=5, help="episodes")
    add_seed(xv, "episode i resets with seed+i", default=20_000)
    xv.add_argument("--max-steps", type=int, default=1000, help="episode step limit")
