"""``ws policy collect|train|eval``: the video-depth-action policy for PiPER manipulation
(seed 004): demonstrations, training, closed-loop evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .common import add_device, add_seed, add_threads, command, config_errors, group, set_threads

_INDICATORS = {"improvement": 1, "not-improvement": 0, "unknown": 2}


def time_tag() -> str:
    """The local time as ``YYYYmmdd-HHMMSS`` (default run folder names)."""
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def read_episode_files(files) -> tuple[list, dict]:
    """The episodes of the comma-separated demonstration ``files`` and the first file's
    attributes.

    Raises:
        DemoError: the files hold images of different sizes (and read_demos's errors).
    """
    from ws_policy.data import DemoError, read_demos

    episodes, attrs = [], None
    for path in str(files).split(","):
        eps, a = read_demos(path)
        if attrs is not None and int(a["image_size"]) != int(attrs["image_size"]):
            raise DemoError(f"{path} has {a['image_size']} px images, {str(files).split(',')[0]} "
                            f"{attrs['image_size']} px: train on one size")
        episodes += eps
        attrs = attrs or a
    return episodes, attrs


def cmd_policy_collect(args) -> int:
    """Record scripted-expert demonstrations with RGB-D video to one HDF5 file."""
    from tqdm import tqdm

    from ws_policy.data import collect_demos, write_demos

    with tqdm(total=args.episodes, desc=f"{args.task} demos", unit="ep") as bar, config_errors():
        episodes, attrs = collect_demos(args.task, args.episodes, seed=args.seed, size=args.size, camera=args.camera,
                                        failure_rate=args.failures, randomize=not args.no_randomize,
                                        workspace=args.workspace, stratified=args.stratified, wrist=args.wrist,
                                        images=not args.no_images, progress=lambda done, total: bar.update(1))
    path = write_demos(episodes, attrs, args.out)
    wins = sum(e.success for e in episodes)
    steps = sum(len(e.actions) for e in episodes)
    print(f"wrote {path}: {len(episodes)} episodes ({wins} successful, "
          f"{sum(bool(e.failure) for e in episodes)} with a deliberate failure), {steps} steps, "
          + ("no images (joints, object states and actions: for --model state or --actor-demos)" if args.no_images
             else f"{args.size}x{args.size} RGB-D from the {args.camera!r} camera"))
    return 0


def cmd_policy_train(args) -> int:
    """Train the policy, a baseline or the video-depth world model on demonstrations."""
    import numpy as np
    from tqdm import tqdm

    from ws_mppi.config import ConfigError
    from ws_policy.data import DemoDataset, DemoError, read_demos
    from ws_policy.model import PolicyConfig, default_vocabulary
    from ws_policy.train import TwoStagePolicy, load_policy, save_policy, train_policy

    set_threads(args.threads)
    if args.model != "pose" and (args.actor_noise or args.retrain_actor):
        raise ConfigError("--actor-noise and --retrain-actor are for --model pose (its actor over the perception's "
                          "estimate)")
    if not (math.isfinite(args.actor_noise) and args.actor_noise >= 0):
        raise ConfigError(f"--actor-noise must be a finite number of metres >= 0, got {args.actor_noise}")
    if args.object_memory is not None and (args.model != "pose" or args.object_memory < 0):
        raise ConfigError(f"--object-memory is how a --model pose policy runs, a number of frames >= 0; got "
                          f"{args.object_memory} for --model {args.model}")
    episodes, attrs = read_episode_files(args.demos)
    if args.actor_demos and args.model != "pose":
        raise ConfigError("--actor-demos trains the actor of --model pose on other demonstrations than its perception")
    if int(attrs["image_size"]) == 0 and args.model != "state":
        raise ConfigError(f"{args.demos} was recorded without images (ws policy collect --no-images): --model "
                          f"{args.model} needs them; such files train --model state, or a pose policy's actor "
                          f"(--actor-demos)")
    if args.model == "state":
        return _train_state_policy(args, episodes, attrs)
    if args.model == "pose":
        return _train_pose_policy(args, episodes, attrs)
    if args.state_inputs:
        raise ConfigError("--state-inputs is for --model state")
    if args.batch_size is None:
        args.batch_size = 32
    if args.lr is None:
        args.lr = 5e-4
    size = int(attrs["image_size"])
    video_eps = []
    if args.videos:  # episodes used as video only (seed 004's action-free data in the policy's training mix)
        if args.model == "action_only":
            raise ConfigError("--videos train the video and depth prediction; --model action_only predicts none")
        for path in str(args.videos).split(","):
            eps, a = read_demos(path)
            if int(a["image_size"]) != size:
                raise DemoError(f"{path} has {a['image_size']} px images, the demonstrations {size} px: one size")
            video_eps += eps
    curve = []
    callback = None
    if args.eval_every:  # closed-loop checks while training
        if args.model in ("two_stage", "world"):
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
                              "action_weight": args.action_weight,
                              "action_prediction": args.action_prediction}.items() if v is not None}
    if args.privileged:
        over["privileged"] = True
    if args.object_aux:
        over["object_aux"] = args.object_aux
    if args.encoder == "keypoints":
        over.update(encoder="keypoints", keypoints=args.keypoints, trunk_width=args.trunk_width,
                    crop=args.crop if args.crop is not None else size - size // 8, wrist=bool(attrs.get("wrist", False)))
        if attrs.get("wrist"):
            over["wrist_fov_y_deg"] = float(attrs["wrist_fovy"])
    elif args.crop:
        raise ConfigError("--crop is for --encoder keypoints")
    kinds = {"mot": [("mot", "flow")], "mot_idm": [("mot", "idm")], "action_only": [("action_only", "flow")],
             "world": [("world", "flow")], "two_stage": [("world", "flow"), ("idm", "idm")]}
    init = None
    if args.init:
        init, _ = load_policy(args.init)
        from ws_policy.perception import PosePolicy

        if isinstance(init, PosePolicy):  # its trained perception's keypoint encoders start the policy's
            if args.encoder != "keypoints":
                raise ConfigError("--init with a pose policy gives its keypoint encoders: add --encoder keypoints")
            pc = init.perception.cfg
            if (pc.trunk_width, pc.keypoints, pc.image_size) != (args.trunk_width, args.keypoints, size):
                raise ConfigError(f"{args.init}'s perception has trunk width {pc.trunk_width}, {pc.keypoints} "
                                  f"keypoints and {pc.image_size} px images: give --trunk-width {pc.trunk_width} "
                                  f"--keypoints {pc.keypoints} and demonstrations of {pc.image_size} px "
                                  f"(now {args.trunk_width}, {args.keypoints}, {size})")
            init = init.vision_init()
    if args.freeze_vision and not args.init:
        raise ConfigError("--freeze-vision keeps the keypoint trunks --init gives: give --init (e.g. a pose policy)")
    video = None
    if args.video_model == "dit":  # the video world model as the video-depth stream
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
        raise ConfigError(f"{'--video-init' if args.video_init else '--obs-stream'} needs --video-model dit")
    nets, hist_all = [], {}
    stages = kinds[args.model]
    if args.model == "two_stage" and init is not None and getattr(init, "cfg", None) is not None \
            and init.cfg.mode == "world":  # a trained world model is stage one as it is: train only the IDM
        nets.append(init)
        stages = stages[1:]
    if video_eps and not any(mode in ("mot", "world") for mode, _ in stages):
        raise ConfigError("--videos would go unused: the given world model is stage one as it is, and the "
                          "inverse-dynamics stage predicts no video")
    state_paths = {mode: Path(f"{args.out}.{mode}.state") for mode, _ in stages}
    found = [str(p) for p in state_paths.values() if p.is_file()]
    if found and not args.resume:
        raise ConfigError(f"a training state of an interrupted run exists ({', '.join(found)}): add --resume to "
                          f"continue it, or remove it to start afresh")
    for mode, head in stages:
        future = video.cfg.image_size if video is not None else size // 2
        with config_errors("policy config: "):
            cfg = base(mode=mode, action_head=head, image_size=size, future_size=future,
                       fov_y_deg=float(attrs.get("fovy", 60.0)), vocab=tuple(default_vocabulary()), **over)
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
        with config_errors():  # e.g. a --video-share outside (0, 1)
            net, hist = train_policy(cfg, ds, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                     init=init if mode != "idm" else None, progress=bar, callback=callback,
                                     videos=vids, video_share=args.video_share, device=args.device,
                                     state_path=state_paths[mode], save_every=args.save_every,
                                     state_extra={"curve": curve},
                                     freeze_vision=args.freeze_vision and mode != "idm")
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
    for p in state_paths.values():  # the checkpoint holds everything now
        p.unlink(missing_ok=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} ({args.model}, {params / 1e6:.2f} M parameters): " +
          json.dumps(hist_all))
    return 0


def _train_state_policy(args, episodes, attrs) -> int:
    """``ws policy train --model state``: the privileged state-based policy (ws_policy/state_policy.py)."""
    import numpy as np
    from tqdm import tqdm

    from ws_mppi.config import ConfigError
    from ws_policy.state_policy import StatePolicyConfig, train_state_policy
    from ws_policy.train import save_policy

    unused = [flag for flag, on in (("--eval-every", args.eval_every), ("--videos", args.videos),
                                    ("--init", args.init), ("--resume", args.resume), ("--object-aux", args.object_aux),
                                    ("--freeze-vision", args.freeze_vision),
                                    ("--encoder keypoints", args.encoder != "patch")) if on]
    if unused:
        raise ConfigError(f"--model state reads joints and object poses only and trains in minutes: "
                          f"{', '.join(unused)} do not apply (evaluate it with 'ws policy eval')")
    with config_errors("state policy config: "):
        cfg = StatePolicyConfig(**{k: v for k, v in {"chunk": args.chunk, "inputs": args.state_inputs,
                                                     "action_prediction": args.action_prediction}.items()
                                   if v is not None})
    bar = tqdm(total=args.steps, desc="train state", unit="step")
    with config_errors():
        model, hist = train_state_policy(cfg, episodes, args.steps, batch_size=args.batch_size or 256,
                                         lr=args.lr or 1e-3, seed=args.seed, progress=bar,
                                         successes_only=not args.keep_failures)
    bar.close()
    summary = {"loss_first": float(np.mean(hist["loss"][:20])), "loss_last": float(np.mean(hist["loss"][-20:])),
               "seconds": round(hist["seconds"], 1)}
    path = save_policy(model, args.out, {"task": attrs.get("task"), "camera": attrs.get("camera"),
                                         "demos": str(args.demos), "workspace": attrs.get("workspace", "full"),
                                         "kind": "state", "steps": args.steps, "history": {"state": summary}})
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} (state, {params / 1e6:.2f} M parameters; reads the simulator's object poses: a teacher "
          f"and a yardstick, never for a robot): " + json.dumps(summary))
    return 0


def cmd_policy_eval(args) -> int:
    """Closed-loop success rate, latency and videos of a policy (or the scripted expert) on a task."""
    from tqdm import tqdm

    from ws_policy.evaluate import evaluate_policy

    set_threads(args.threads)
    out = args.out or Path("runs") / f"policy-{args.task}-{time_tag()}"
    runner = None
    if args.checkpoint != "scripted":  # load and check before any progress bar
        from ws_policy.train import PolicyRunner, load_policy, resolve_policy

        with config_errors():
            args.checkpoint = resolve_policy(args.checkpoint, args.task)
        model, payload = load_policy(args.checkpoint)
        with config_errors(f"{args.checkpoint}: "):
            runner = PolicyRunner(model, steps=args.euler_steps, seed=args.seed, indicator=_INDICATORS[args.indicator],
                                  object_memory=args.object_memory)
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
            where = (f"; the object-position head misses the cube by {off['cube_position_error_m'] * 100:.1f} cm and "
                     f"the target by {off['target_position_error_m'] * 100:.1f} cm (medians)"
                     if "cube_position_error_m" in off else "")
            print(f"offline on {args.demos}: chunk error {off['chunk_error_rad']} rad vs holding still "
                  f"{off['hold_still_error_rad']} rad over {off['windows']} windows{where}")
        latency = args.latency if args.latency == "measured" else int(args.latency)
        extra = payload.get("extra") or {}
        report = evaluate_policy(runner, args.task, args.episodes, args.seed, size=model.cfg.image_size,
                                 camera=extra.get("camera") or "task",
                                 replan_every=args.replan_every, chunk=model.cfg.chunk, latency=latency,
                                 ensemble_m=None if args.no_ensemble else args.ensemble_m, out_dir=out,
                                 video=not args.no_video, progress=progress,
                                 name=extra.get("kind") or "policy",
                                 workspace=args.workspace or extra.get("workspace") or "full")
    bar.close()
    lo, hi = report["ci95"]
    print(f"{args.task}: {report['successes']}/{report['episodes']} successes = {report['success_rate']:.2f} "
          f"(95% CI {lo:.2f}-{hi:.2f}); inference latency {json.dumps(report['latency'])}; gaps {report['gaps']}")
    if report.get("failure_modes"):
        m = report["failure_modes"]
        miss = f" (median miss {m['median_miss_m'] * 100:.1f} cm)" if m["median_miss_m"] is not None else ""
        print(f"failures: {m['cube_not_lifted']} with the cube never lifted, {m['lifted_not_placed']} lifted but not "
              f"placed{miss}")
    if report.get("start_cube_error_m"):
        c, t, a = report["start_cube_error_m"], report["start_target_error_m"], report["approach_cube_error_m"]
        print(f"the object head in each first frame: cube off by {c['median'] * 100:.1f} cm (median; max "
              f"{c['max'] * 100:.1f}), target by {t['median'] * 100:.1f} cm (max {t['max'] * 100:.1f}); "
              f"as the arm approaches, the cube off by {a['median'] * 100:.1f} cm (median of the episodes' medians"
              + "".join(f"; {k.removeprefix('median_').replace('_', ' ')} {a[k] * 100:.1f} cm"
                        for k in ("median_lifted", "median_never_lifted") if k in a) + ")")
    for what in ("target", "cube") if report.get("carry_target_error_m") else ():
        c = report[f"carry_{what}_error_m"]
        by = ", ".join(f"{k.removeprefix('median_').replace('_', ' ')} {c[k] * 100:.1f} cm"
                       for k in ("median_placed", "median_not_placed") if k in c)
        print(f"while the cube is carried, the {what} off by {c['median'] * 100:.1f} cm (median of the episodes' "
              f"medians; max {c['max'] * 100:.1f}; {by})")
    print(f"report: {out / 'report.json'}  videos: {report['videos']}")
    return 0


def _train_pose_policy(args, episodes, attrs) -> int:
    """``ws policy train --model pose``: object perception from the cameras, then a state policy over the
    joints and the estimate (ws_policy/perception.py)."""
    import numpy as np
    from tqdm import tqdm

    from ws_mppi.config import ConfigError
    from ws_policy.model import default_vocabulary
    from ws_policy.perception import PerceptionConfig, PosePolicy, perception_errors, reset_frames, train_perception
    from ws_policy.state_policy import StatePolicyConfig, train_state_policy
    from ws_policy.train import save_policy

    unused = [flag for flag, on in (("--eval-every", args.eval_every), ("--videos", args.videos),
                                    ("--resume", args.resume), ("--object-aux", args.object_aux),
                                    ("--freeze-vision", args.freeze_vision),
                                    ("--privileged", args.privileged), ("--keep-failures", args.keep_failures),
                                    ("--state-inputs", args.state_inputs)) if on]
    if unused:
        raise ConfigError(f"--model pose trains an object perception and a state policy over its estimate: "
                          f"{', '.join(unused)} do not apply")
    size = int(attrs["image_size"])
    wrist = bool(attrs.get("wrist", False))
    init = None
    if args.init:
        from ws_policy.train import load_policy

        init, _ = load_policy(args.init)
        if not isinstance(init, PosePolicy):
            raise ConfigError(f"--model pose --init continues a pose policy; {args.init} is not one")
        if init.perception.cfg.image_size != size or init.perception.cfg.wrist != wrist:
            raise ConfigError(f"{args.init} reads {init.perception.cfg.image_size} px images"
                              f"{' with' if init.perception.cfg.wrist else ' without'} the wrist camera; "
                              f"{args.demos} has {size} px{' with' if wrist else ' without'} it")
    elif args.perception_rollouts:
        raise ConfigError("--perception-rollouts runs the --init pose policy: give --init")
    if args.rollout_seed is not None and not args.perception_rollouts:
        raise ConfigError("--rollout-seed sets the seeds of --perception-rollouts: give --perception-rollouts N")
    if args.rollout_seed is not None and args.rollout_seed < 0:
        raise ConfigError(f"--rollout-seed must be >= 0, got {args.rollout_seed}")
    if args.retrain_actor and init is None:
        raise ConfigError("--retrain-actor replaces the actor of the --init pose policy: give --init "
                          "(without --init a new actor is trained anyway)")
    if args.actor_demos and init is not None and not args.retrain_actor:
        raise ConfigError("--actor-demos trains a new actor, but with --init the init's actor is kept: add --retrain-actor")
    if args.actor_noise and init is not None and not args.retrain_actor:
        raise ConfigError("--actor-noise trains a new actor, but with --init the init's actor is kept: add --retrain-actor")
    if args.perception_steps < 0 or (args.perception_steps == 0 and init is None):
        raise ConfigError(f"--perception-steps must be >= 1 (0 only with --init, to keep its perception), "
                          f"got {args.perception_steps}")
    if args.perception_steps == 0 and (args.perception_rollouts or args.perception_layouts):
        raise ConfigError("--perception-steps 0 keeps the --init perception untrained: --perception-rollouts and "
                          "--perception-layouts would be collected for nothing")
    with config_errors("pose policy config: "):
        pcfg = PerceptionConfig(image_size=size, crop=args.crop if args.crop is not None else size - size // 8,
                                keypoints=args.keypoints, trunk_width=args.trunk_width, wrist=wrist,
                                joints=args.perception_joints,
                                fov_y_deg=float(attrs.get("fovy", 45.0)),
                                wrist_fov_y_deg=float(attrs.get("wrist_fovy", 75.0)),
                                vocab=tuple(default_vocabulary()))
        acfg = StatePolicyConfig(**{k: v for k, v in {"chunk": args.chunk, "inputs": "targets",
                                                      "action_prediction": args.action_prediction}.items()
                                    if v is not None})
    with config_errors():
        layouts = []
        if args.perception_layouts:
            bar = tqdm(total=args.perception_layouts, desc="first frames of new layouts", unit="layout")
            layouts = reset_frames(attrs.get("task", "pick_place"), args.perception_layouts, seed=1_000_000 + args.seed,
                                   size=size, wrist=wrist, workspace=attrs.get("workspace", "full"),
                                   camera=attrs.get("camera", "task"), progress=lambda done, total: bar.update(1))
            bar.close()
        rollouts, rollout_report = [], None
        if args.perception_rollouts:  # the states the policy itself visits, labelled by the simulator
            from ws_policy.evaluate import evaluate_policy
            from ws_policy.train import PolicyRunner

            rollout_seed = args.rollout_seed if args.rollout_seed is not None else 2_000_000 + 100_000 * args.seed
            bar = tqdm(total=args.perception_rollouts, desc="rollouts of --init", unit="ep")
            rollout_report = evaluate_policy(
                PolicyRunner(init, seed=args.seed), attrs.get("task", "pick_place"), args.perception_rollouts,
                seed=rollout_seed, size=size, camera=attrs.get("camera", "task"),
                chunk=init.cfg.chunk, latency=1, video=False, workspace=attrs.get("workspace", "full"),
                record=rollouts, record_every=2, progress=lambda done, total, wins: bar.update(1))
            bar.close()
        if init is not None:
            pcfg = init.perception.cfg
        if args.perception_steps == 0:  # --init's perception, kept as it is
            perception, phist = init.perception, None
        else:
            bar = tqdm(total=args.perception_steps, desc="train perception", unit="step")
            perception, phist = train_perception(pcfg, episodes + layouts + rollouts, args.perception_steps,
                                                 batch_size=args.perception_batch_size, lr=args.perception_lr,
                                                 seed=args.seed, progress=bar,
                                                 init=init.perception if init is not None else None)
            bar.close()
        if init is not None and not args.retrain_actor:  # the init's actor, trained on its own inputs
            actor, ahist = init.actor, None
        else:
            if init is not None:
                acfg = init.actor.cfg
            actor_episodes = episodes
            if args.actor_demos:
                actor_episodes, actor_attrs = read_episode_files(args.actor_demos)
                if actor_attrs.get("task") != attrs.get("task"):
                    raise ConfigError(f"--actor-demos {args.actor_demos} are {actor_attrs.get('task')!r} "
                                      f"demonstrations, --demos {attrs.get('task')!r}")
            bar = tqdm(total=args.steps, desc="train actor", unit="step")
            actor, ahist = train_state_policy(acfg, actor_episodes, args.steps, batch_size=args.batch_size or 256,
                                              lr=args.lr or 1e-3, seed=args.seed, progress=bar,
                                              input_noise_m=args.actor_noise, noise_when=args.actor_noise_when,
                                              noise_objects=args.actor_noise_objects)
            bar.close()
    memory = args.object_memory if args.object_memory is not None else (init.object_memory if init is not None else 0)
    model = PosePolicy(perception, actor, object_memory=memory)
    model.normalizer = actor.normalizer
    errors = perception_errors(perception, episodes, first_only=True)

    def summary(h):
        return {"loss_first": float(np.mean(h["loss"][:20])), "loss_last": float(np.mean(h["loss"][-20:])),
                "seconds": round(h["seconds"], 1)}

    hist = {"perception": {**(summary(phist) if phist is not None else {"kept_from": str(args.init)}),
                           "steps": args.perception_steps, "layouts": args.perception_layouts,
                           "first_frame_errors_on_training_demos": errors},
            "actor": {**summary(ahist), "steps": args.steps, "demos": str(args.actor_demos or args.demos),
                      "input_noise_m": args.actor_noise,
                      "noise_when": args.actor_noise_when, "noise_objects": args.actor_noise_objects}
            if ahist is not None else {"kept_from": str(args.init)}}
    if rollout_report is not None:
        hist["perception"].update(init=str(args.init), rollouts=args.perception_rollouts, rollout_seed=rollout_seed,
                                  rollout_frames=len(rollouts), rollout_successes=rollout_report["successes"])
    path = save_policy(model, args.out, {"task": attrs.get("task"), "camera": attrs.get("camera"),
                                         "demos": str(args.demos), "workspace": attrs.get("workspace", "full"),
                                         "kind": "pose", "steps": args.steps, "history": hist})
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} (pose: perception then actor, {params / 1e6:.2f} M parameters; reads the cameras and "
          f"joints only): " + json.dumps(hist))
    return 0


def add_policy(sub) -> None:
    """``ws policy collect|train|eval``."""
    posub = group(sub, "policy", help="the video-depth-action policy (PiPER manipulation)",
                  description="WorldScape Policy commands (seed 004): demonstrations, training, evaluation.")
    pc = command(posub, "collect", cmd_policy_collect, help="record scripted-expert demonstrations with RGB-D video",
                 description="Run the scripted expert on a PiPER task (ws/PiperManip-v0) with domain "
                             "randomisation and write the episodes (RGB, depth, joint states, actions, "
                             "instruction, success) to one HDF5 file, atomically.")
    pc.add_argument("--task", default="pick_place", help="pick_place, push or stack")
    pc.add_argument("--episodes", type=int, default=100)
    add_seed(pc, "episode i resets with seed+i")
    pc.add_argument("--out", type=Path, required=True, help="output .hdf5")
    pc.add_argument("--size", type=int, default=64, help="square image side, px")
    pc.add_argument("--camera", default="task", help="scene camera: task, front or scene")
    pc.add_argument("--failures", type=float, default=0.0, help="share of episodes with a deliberate expert failure")
    pc.add_argument("--no-randomize", action="store_true", help="fixed lighting and textures")
    pc.add_argument("--no-images", action="store_true",
                    help="record no images (about ten times faster): joints, object states and actions, for a state "
                         "policy or a pose policy's actor (ws policy train --actor-demos)")
    pc.add_argument("--wrist", action="store_true",
                    help="also record the wrist camera (for 'ws policy train --encoder keypoints', which then reads both)")
    pc.add_argument("--stratified", action="store_true",
                    help="spread the layouts evenly: a Latin hypercube over the cube's radius, bearing and yaw and the "
                         "target's radius and bearing, one episode per stratum of each (instead of independent draws)")
    pc.add_argument("--workspace", choices=["full", "narrow"], default="full",
                    help="where the task's objects are drawn: the whole reachable band, or the small-scale setting "
                         "(cube and target each in a 6 x 4 cm patch); kept in the file for training and evaluation")

    pt = command(posub, "train", cmd_policy_train,
                 help="train the policy (or a baseline, or the world model) on demonstrations",
                 description="Train WorldScape Policy (seed 004: one flow-matching objective over future "
                             "video, depth and the action chunk, plus alpha L_3D) or a baseline on the "
                             "same demonstrations: action_only (flow matching on actions alone), "
                             "two_stage (a video-depth world model, then a separate inverse-dynamics "
                             "model), mot_idm (the inverse-dynamics head), world (video and depth only, "
                             "actions unused: pretrain it, then --init the policy from it).")
    pt.add_argument("--demos", required=True, help="demonstrations from 'ws policy collect' (several: comma-separated)")
    pt.add_argument("--model", default="mot",
                    choices=["mot", "mot_idm", "action_only", "two_stage", "world", "state", "pose"],
                    help="mot: WorldScape Policy; action_only and two_stage: its baselines; mot_idm: an inverse-"
                         "dynamics head; world: the video-depth world model alone; state: a small policy that reads "
                         "the simulator's object poses instead of images (the privileged teacher of 'ws hitl dagger "
                         "--teacher' and a yardstick; never for a robot); pose: an object perception that estimates "
                         "the cube and the target from the cameras, then a state policy over that estimate "
                         "(ws_policy/perception.py; images and joints only)")
    pt.add_argument("--state-inputs", choices=["poses", "targets"], default=None,
                    help="with --model state: what it reads besides the joints: both cubes' and the target's poses "
                         "(poses, the default) or the task's cube and target positions and the cube's yaw, what an "
                         "object perception estimates (targets)")
    pt.add_argument("--perception-steps", type=int, default=20000,
                    help="with --model pose: the perception's training steps (--steps are the actor's)")
    pt.add_argument("--perception-batch-size", type=int, default=64, help="with --model pose: frames per step")
    pt.add_argument("--perception-joints", action="store_true",
                    help="with --model pose: the perception also reads the joint positions (a copycat shortcut "
                         "through the demonstrating arm's motion; see ws_policy/perception.py)")
    pt.add_argument("--perception-layouts", type=int, default=0,
                    help="with --model pose: also train the perception on the first frames of this many new layouts "
                         "(resets with seeds from 1000000 + --seed, stratified; no expert runs)")
    pt.add_argument("--perception-lr", type=float, default=1e-3, help="with --model pose: peak learning rate")
    pt.add_argument("--perception-rollouts", type=int, default=0,
                    help="with --model pose --init POSE.pt: run that policy for this many episodes (seeds from "
                         "2000000 + 100000 x --seed, one step of latency) and train its perception further on every "
                         "second frame it saw, labelled with the true object positions (the states its own mistakes "
                         "lead to); its actor is kept")
    pt.add_argument("--actor-noise", type=float, default=0.0, metavar="M",
                    help="with --model pose: train the actor on object positions perturbed by Gaussian noise of this "
                         "std, metres (e.g. 0.01, about the perception's error while carrying), not on exact ones")
    pt.add_argument("--actor-noise-when", choices=["always", "lifted"], default="always",
                    help="with --actor-noise: perturb every window, or only those whose cube is lifted (the carry)")
    pt.add_argument("--object-memory", type=int, default=None, metavar="FRAMES",
                    help="with --model pose: how the policy runs, saved in its checkpoint: its actor reads the target, "
                         "and the cube until the estimate says it is lifted, as the mean of the episode's first FRAMES "
                         "estimates (ws_policy.perception.ObjectMemory; 0: the live estimate at every call; default: "
                         "--init's, else 0). '--init P --perception-steps 0 --object-memory N' re-saves P with it")
    pt.add_argument("--actor-noise-objects", choices=["both", "cube"], default="both",
                    help="with --actor-noise: perturb the cube's and the target's positions, or the cube's only")
    pt.add_argument("--actor-demos", default=None, metavar="FILES",
                    help="with --model pose: train the actor on these demonstrations (comma-separated; images not "
                         "needed: 'ws policy collect --no-images') instead of --demos, which train the perception")
    pt.add_argument("--retrain-actor", action="store_true",
                    help="with --model pose --init: train a new actor (--steps, --actor-noise) instead of keeping the "
                         "init's; with --perception-steps 0 the init's perception is kept as it is")
    pt.add_argument("--rollout-seed", type=int, default=None,
                    help="first seed of the --perception-rollouts episodes (default 2000000 + 100000 x --seed); give "
                         "each further round its own block (e.g. + 1000 per round) so that it sees layouts the "
                         "previous rounds did not")
    pt.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    pt.add_argument("--steps", type=int, default=2000)
    pt.add_argument("--batch-size", type=int, default=None, help="windows per step (default 32; 256 for --model state)")
    pt.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (AdamW, warm-up then cosine decay; default 5e-4, 1e-3 for --model state)")
    pt.add_argument("--size", choices=["cpu", "gpu"], default="cpu",
                    help="model size preset (where it trains is --device)")
    pt.add_argument("--chunk", type=int, default=None, help="action chunk length L (default: the preset's)")
    pt.add_argument("--frames", type=int, default=None, help="future frames F")
    pt.add_argument("--d-model", type=int, default=None)
    pt.add_argument("--layers", type=int, default=None)
    pt.add_argument("--alpha", type=float, default=None, help="weight of L_3D")
    pt.add_argument("--action-weight", type=float, default=None,
                    help="weight of the action chunk's flow-matching term against the video and depth terms (default 1)")
    pt.add_argument("--action-prediction", choices=["velocity", "sample"], default=None,
                    help="what the action tokens' output is: the flow velocity (velocity, the default) or the clean "
                         "chunk (sample: x-prediction, far more precise chunks in docs/policy.md; "
                         "see ws_policy/model.py)")
    pt.add_argument("--init", type=Path, default=None,
                    help="start from this checkpoint's matching weights (with --model two_stage, a trained 'world' "
                         "checkpoint is used as stage one and only the inverse-dynamics model is trained; a --model "
                         "pose checkpoint gives its perception's keypoint encoders to an image policy, and with --model "
                         "pose its perception, config included, continues training and its actor is kept)")
    pt.add_argument("--freeze-vision", action="store_true",
                    help="with --encoder keypoints and --init: keep the keypoint trunks as --init gives them (e.g. "
                         "a --model pose checkpoint's trained perception); no gradient flows through them")
    pt.add_argument("--video-model", choices=["mot", "dit"], default="mot",
                    help="the video-depth stream of mot and world: the policy's own video and depth experts (mot) or "
                         "the video world model of 'ws video experts' (dit), sharing attention with the action "
                         "expert")
    pt.add_argument("--video-init", type=Path, default=None,
                    help="with --video-model dit: start the stream from this 'ws video experts train' checkpoint "
                         "(its sizes become the stream's)")
    pt.add_argument("--video-kind", default="joints",
                    help="with --video-model dit: the stream's control kind (its expert)")
    pt.add_argument("--obs-stream", action="store_true",
                    help="with --video-model dit: the current frame also enters at full resolution as its own stream "
                         "(the MoT's RGB and depth tokens with the Depth Positional Embedding, own weights, the same "
                         "shared attention) beside the world model's view of it")
    pt.add_argument("--encoder", choices=["patch", "keypoints"], default="patch",
                    help="how the current frame becomes tokens: patches with the Depth Positional Embedding (patch), "
                         "or a GroupNorm conv trunk with spatial-softmax keypoints whose depth makes 3D points "
                         "(keypoints; robomimic / Diffusion Policy's encoder, see ws_policy/vision.py)")
    pt.add_argument("--keypoints", type=int, default=16, help="with --encoder keypoints: keypoint tokens per modality")
    pt.add_argument("--trunk-width", type=int, default=16, help="with --encoder keypoints: the trunk's first width")
    pt.add_argument("--crop", type=int, default=None,
                    help="with --encoder keypoints: random crops of this many px while training, the centre crop at "
                         "inference (default: 7/8 of the image, 56 of 64 px; 0: none)")
    pt.add_argument("--object-aux", type=float, default=0.0,
                    help="weight of an auxiliary loss that regresses the task's cube and target positions (from the "
                         "simulator's object state) from the policy's context while training; nothing of it runs at "
                         "inference (0: off; see ws_policy/model.py)")
    pt.add_argument("--resume", action="store_true",
                    help="continue an interrupted run from its training state (OUT.<mode>.state, written every "
                         "--save-every steps; removed once OUT is written); the other settings must be the run's")
    pt.add_argument("--save-every", type=int, default=500, help="steps between two writes of the training state")
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
    add_seed(pt)
    add_threads(pt, help=None)
    add_device(pt)

    pe = command(posub, "eval", cmd_policy_eval, help="closed-loop success rate of a policy on a PiPER task",
                 description="Run a policy checkpoint (or 'scripted', the expert) through the closed-loop "
                             "executor for N seeded episodes; print the success rate with its 95% Wilson "
                             "interval and the inference latency percentiles; write report.json and mp4s "
                             "of a success and a failure.")
    pe.add_argument("--checkpoint", required=True,
                    help="policy checkpoint, 'default' (the policy shipped for --task, where one ships) or 'scripted'")
    pe.add_argument("--task", default="pick_place")
    pe.add_argument("--episodes", type=int, default=50)
    add_seed(pe, "episode i resets with seed+i (demos use 0..)", default=1000)
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
    pe.add_argument("--object-memory", type=int, default=None, metavar="FRAMES",
                    help="a pose policy's actor reads the target, and the cube until the estimate says it is lifted, "
                         "as the mean of the episode's first FRAMES estimates (ws_policy.perception.ObjectMemory; "
                         "0: the live estimate at every call; default: what the checkpoint says, set by "
                         "'ws policy train --object-memory')")
    add_threads(pe, help=None)
