"""``ws hitl convert|dagger|retrain|recover``: human-in-the-loop recordings to training data,
HG-DAgger in simulation and advantage-conditioned retraining (seed 004, Innovation 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import add_device, add_seed, add_threads, command, config_errors, group, headless_gl, set_threads
from .policy import read_episode_files


def _flow_policy_and_episodes(init, files):
    """``(model, payload, episodes, attrs)``: a one-network flow policy and the episodes of the
    comma-separated ``files`` (their first file's attributes), checked against each other."""
    from ws_mppi.config import ConfigError
    from ws_policy.train import TwoStagePolicy, load_policy

    model, payload = load_policy(init)
    if isinstance(model, TwoStagePolicy) or not model.cfg.predicts_actions or model.cfg.action_head != "flow":
        raise ConfigError(f"{init}: DAgger fine-tunes a one-network flow policy (mot or action_only)")
    episodes, attrs = read_episode_files(files)
    if model.cfg.image_size != int(attrs["image_size"]):
        raise ConfigError(f"the policy takes {model.cfg.image_size} px images; {files} has {attrs['image_size']} px")
    return model, payload, episodes, attrs


def _dagger_config(args, **kw):
    """A :class:`ws_policy.hitl.DaggerConfig` from the retraining flags (:func:`_add_retrain_args`)
    and ``kw``; a bad value is a ConfigError."""
    from ws_policy.hitl import DaggerConfig

    with config_errors():
        return DaggerConfig(train_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            conditioned=not args.plain_bc, successes_only=args.successes_only,
                            indicator_on_actions=args.indicator_on_actions,
                            value_steps=args.value_steps, n_step=args.n_step or None, value_folds=args.value_folds,
                            threshold=args.threshold, seed=args.seed, device=args.device, **kw)


def _progress_bars(cfg, rounds: int = 1):
    """The tqdm bars of ``rounds`` retrainings: the policy's steps and the value's (conditioned only)."""
    from tqdm import tqdm

    bar = tqdm(total=rounds * cfg.train_steps, desc="retraining", unit="step", leave=False)
    vbar = tqdm(total=rounds * cfg.value_steps * cfg.value_folds if cfg.conditioned else 0, desc="value", unit="step",
                leave=False, disable=not cfg.conditioned)
    return bar, vbar


def cmd_hitl_convert(args) -> int:
    """Cut correction_recorder MCAP files into policy training episodes."""
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


def cmd_hitl_retrain(args) -> int:
    """Fine-tune a policy once on aggregated episodes (advantage-conditioned or plain BC)."""
    import dataclasses

    from tqdm import tqdm

    from ws_policy.hitl import episode_limit, retrain
    from ws_policy.train import save_policy

    set_threads(args.threads)
    model, payload, episodes, attrs = _flow_policy_and_episodes(args.init, args.aggregate)
    cfg = _dagger_config(args)
    kind = "advantage-conditioned" if cfg.conditioned else \
        "behaviour cloning on the successful episodes" if cfg.successes_only else "plain behaviour cloning"
    print(f"retraining {args.init} ({kind}) on {len(episodes)} episodes of {args.aggregate}, {cfg.train_steps} steps")
    bar, vbar = _progress_bars(cfg)
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
    """HG-DAgger rounds in simulation, the scripted expert standing in for the teleoperator."""
    import dataclasses

    from tqdm import tqdm

    from ws_policy.data import write_demos
    from ws_policy.hitl import dagger, episode_limit, evaluate_autonomous, retrain
    from ws_policy.train import save_policy

    headless_gl()
    set_threads(args.threads)
    model, payload, demos, attrs = _flow_policy_and_episodes(args.init, args.demos)
    teacher = None
    if args.teacher:
        from ws_mppi.config import ConfigError
        from ws_policy.hitl import PrivilegedTeacher
        from ws_policy.train import load_policy

        if args.successes_only:
            raise ConfigError("--teacher labels every step the student visits: every step is cloned "
                              "(not --successes-only)")
        args.plain_bc = True
        with config_errors(f"--teacher {args.teacher}: "):
            teacher = PrivilegedTeacher(load_policy(args.teacher)[0])
    cfg = _dagger_config(args, rounds=args.rounds, episodes_per_round=args.episodes_per_round,
                         autonomous_per_round=args.autonomous_per_round, eval_episodes=args.eval_episodes,
                         eval_seed=args.eval_seed, rollout_seed=args.rollout_seed, drift_m=args.drift,
                         min_expert_steps=args.min_expert_steps, stall_steps=args.stall_steps,
                         grip_steps=args.grip_steps, reach_m=args.reach, latency=args.latency)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = "advantage-conditioned" if cfg.conditioned else "plain behaviour cloning"
    if teacher is not None:
        kind = f"a privileged teacher, {args.teacher}, labelling every step; plain behaviour cloning"
    print(f"{'DAgger' if teacher is not None else 'HG-DAgger'} ({kind}): {cfg.rounds} rounds of {cfg.episodes_per_round} rollouts, {cfg.train_steps} "
          f"training steps each, {cfg.eval_episodes} evaluation episodes per round (seeds {cfg.eval_seed}+)")
    extra = {"workspace": attrs.get("workspace", "full"), "dagger": dataclasses.asdict(cfg)}

    def on_round(r, m, aggregate, rec):
        path = save_policy(m, out / f"round{r}.pt", extra={**payload.get("extra", {}), **extra, "round": r})
        rec["checkpoint"] = str(path)

    bar, vbar = _progress_bars(cfg, cfg.rounds)
    result = dagger(model, demos, attrs, cfg, progress=bar, log=tqdm.write, on_round=on_round, value_progress=vbar,
                    teacher=teacher)
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
    """The success rate per DAgger round (with the baselines on the final aggregate) as a PNG."""
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
    """Rewrite a truncated recording (a killed recorder) as a complete MCAP file."""
    from ws_ros.mcap_io import recover

    n = recover(args.recording, args.out)
    print(f"wrote {args.out}: {n} messages recovered from {args.recording}")
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
    add_seed(p, "seed of the training (and the value's folds)")
    add_threads(p, "torch threads (default: torch's choice)")
    add_device(p)


def add_hitl(sub) -> None:
    """``ws hitl convert|dagger|retrain|recover``."""
    hisub = group(sub, "hitl", help="human-in-the-loop: recordings to training data",
                  description="Human-in-the-loop commands (seed 004, Innovation 3).")
    hc = command(hisub, "convert", cmd_hitl_convert,
                 help="MCAP recordings -> policy training episodes (who acted kept per step)",
                 description="Cut correction_recorder MCAP files into episodes at their 'episode' events "
                             "(start, success/failure), one step per joint_command, and write them as a "
                             "demonstration file for 'ws policy train' (with a per-step 'actor': 1 human, "
                             "0 policy). Truncated files (a killed recorder) are read up to their last "
                             "chunk.")
    hc.add_argument("recordings", nargs="+", type=Path, help=".mcap files")
    hc.add_argument("--out", type=Path, required=True, help="output .hdf5")
    hc.add_argument("--task", default=None, help="task name (default: the recording's)")

    hd = command(hisub, "dagger", cmd_hitl_dagger,
                 help="HG-DAgger in simulation with advantage conditioning (seed 004)",
                 description="Human-in-the-loop learning in simulation: the policy runs, the scripted "
                             "expert stands in for the teleoperator and takes over when the policy heads off "
                             "its plan, stalls or holds the gripper wrong (HG-DAgger gating), the data "
                             "aggregate, a progress "
                             "value function is fitted, actions are labelled improvements where their "
                             "advantage is positive or a human acted, and the policy is fine-tuned "
                             "conditioned on that indicator (runs with it set). Each round's policy is "
                             "evaluated autonomously on the same seeds. Writes report.json, dagger.png, "
                             "aggregate.hdf5 and round<N>.pt under --out-dir.")
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
    hd.add_argument("--teacher", type=Path, default=None,
                    help="DAgger with a privileged teacher instead of the gated expert: a policy that reads the object "
                         "poses ('ws policy train --privileged') labels every state the image policy visits, and the "
                         "image policy clones the labels (plain behaviour cloning on every step)")
    hd.add_argument("--compare-bc", action="store_true",
                    help="also train, from the starting policy on the final aggregate for steps x rounds, plain "
                         "behaviour cloning, behaviour cloning on the successful episodes (filtered BC) and (unless "
                         "--plain-bc) the advantage-conditioned policy, and evaluate each")
    hd.add_argument("--out-dir", type=Path, default=Path("runs/dagger"))

    hrt = command(hisub, "retrain", cmd_hitl_retrain,
                  help="one retraining on an aggregate: advantage-conditioned or plain BC",
                  description="Fine-tune a policy once on aggregated episodes (a 'ws hitl dagger' "
                              "aggregate.hdf5, converted recordings, demonstrations; comma-separated): fit "
                              "the progress value, label each policy step an improvement where its "
                              "advantage is positive or a human acted, and train conditioned on that "
                              "indicator; or, with --plain-bc, behaviour cloning on every step. The same "
                              "retraining 'ws hitl dagger --compare-bc' does at its end; evaluate the "
                              "result with 'ws policy eval' (--indicator asks a conditioned policy for "
                              "another indicator).")
    hrt.add_argument("--init", type=Path, required=True, help="starting policy ('ws policy train' checkpoint)")
    hrt.add_argument("--aggregate", required=True, help="episodes to train on (comma-separated .hdf5 files)")
    hrt.add_argument("--out", type=Path, required=True, help="output checkpoint")
    _add_retrain_args(hrt, "")

    hr = command(hisub, "recover", cmd_hitl_recover,
                 help="rewrite a truncated recording (killed recorder) as a complete MCAP file")
    hr.add_argument("recording", type=Path)
    hr.add_argument("--out", type=Path, required=True)
