"""``ws distill`` (a small WestWorld student from a teacher) and ``ws export`` (a WestWorld as
ONNX, for MPPI)."""

from __future__ import annotations

import json
from pathlib import Path

from .common import command, config_errors, device_of, headless_gl, set_threads
from .worldmodel import add_training_args, corpus_training_data


def cmd_distill(args) -> int:
    """Distil a WestWorld teacher into a student with fewer Sys-MoE blocks."""
    from ws_mppi.config import ConfigError
    from ws_distill.distill import distill, student_config
    from ws_worldmodel.checkpoint import load_checkpoint

    headless_gl()
    set_threads(args.threads)
    teacher = load_checkpoint(args.teacher)
    if getattr(teacher, "kind", None) != "westworld":  # before the corpus is read (and before teacher.net)
        raise ConfigError(f"{args.teacher} is not a WestWorld checkpoint (ws pretrain --model westworld)")
    cfg, train, val = corpus_training_data(args, history=args.history or teacher.history,
                                           horizon=args.horizon or teacher.horizon)
    with config_errors():
        scfg = student_config(teacher.net.cfg, n_blocks=args.blocks, d_model=args.d_model,
                              expert_hidden=args.expert_hidden, d_state=args.d_state, expand=args.expand,
                              n_heads=args.heads, tokens=args.tokens, bins=args.bins)
    with config_errors():
        hist = distill(teacher, train, val, scfg, cfg, args.out, alpha=args.alpha, seed=args.seed,
                       resume=args.resume, device=device_of(args))
    t_params = sum(p.numel() for p in teacher.net.parameters())
    s_params = sum(p.numel() for p in load_checkpoint(args.out).net.parameters())
    print(json.dumps({"student": str(args.out), "teacher": str(args.teacher), "alpha": args.alpha,
                      "teacher_parameters": t_params, "student_parameters": s_params, "steps": hist["steps"],
                      "best_val_ce": hist["best_val_loss"]}))
    return 0


def cmd_export(args) -> int:
    """Export a trajectory world model to ONNX and check it against PyTorch."""
    from ws_mppi.config import ConfigError
    from ws_distill.export import OnnxSequenceModel, export_onnx, parity
    from ws_worldmodel.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    if not hasattr(model, "systems"):
        raise ConfigError(f"{args.checkpoint} is not a trajectory world model")
    system = args.system or (next(iter(model.systems)) if len(model.systems) == 1 else None)
    if system is None:
        raise ConfigError(f"the checkpoint knows {sorted(model.systems)}: choose one with --system")
    with config_errors():
        if args.batch is not None and args.batch < 1:
            raise ConfigError(f"--batch must be >= 1 (the planner's samples K), got {args.batch}")
        path = export_onnx(model, system, args.horizon, args.out, opset=args.opset,
                           shared_history=not args.per_sample_history, scan=args.scan, batch=args.batch)
    res = parity(model, OnnxSequenceModel(path), batch_sizes=(1, 64))
    print(json.dumps({"onnx": str(path), "system": system, "history": model.history, "horizon": args.horizon,
                      "shared_history": not args.per_sample_history, "scan": args.scan, "batch": args.batch, "opset": args.opset, "parity_max_abs_diff": res["max_abs_diff"], "per_batch": res["per_batch"]}))
    return 0


def add_distill(sub) -> None:
    """``ws distill``."""
    di = command(sub, "distill", cmd_distill,
                 help="distil a WestWorld into a small student (seed 003 App. G, eqs. 37-38)",
                 description="Train a student WestWorld (fewer Sys-MoE blocks, same bins) on a corpus with "
                             "alpha * cross-entropy on the ground truth + (1 - alpha) * KL(teacher || student). "
                             "Fine-tune the student on a control dataset with 'ws eval control "
                             "--pretrained westworld=STUDENT'.")
    di.add_argument("--teacher", type=Path, required=True, help="WestWorld checkpoint from ws pretrain")
    di.add_argument("--corpus", type=Path, required=True, help="corpus directory from ws corpus build")
    di.add_argument("--systems", default="", help="comma-separated systems (default: all but the held-out ones)")
    di.add_argument("--out", type=Path, required=True, help="student checkpoint path")
    di.add_argument("--blocks", type=int, default=2, help="student Sys-MoE blocks (the seed: 2)")
    di.add_argument("--d-model", type=int, default=None, help="student width (default: the teacher's)")
    di.add_argument("--expert-hidden", type=int, default=None, help="student expert width (default: the teacher's)")
    di.add_argument("--d-state", type=int, default=None, help="student SSM state size (default: the teacher's)")
    di.add_argument("--expand", type=int, default=None, help="student SSM expansion (default: the teacher's)")
    di.add_argument("--heads", type=int, default=None, help="student attention heads (default: the teacher's)")
    di.add_argument("--tokens", choices=["channel", "step"], default=None,
                    help="student tokens: one per channel per step (the seed's) or one per step, its channels "
                         "pooled (MPPI cycles about channels-times fewer tokens; default: the teacher's)")
    di.add_argument("--bins", type=int, default=None,
                    help="student bins: the teacher's (default) or a divisor of them, each student bin the union of "
                         "neighbouring teacher bins (a coarser, cheaper read-out)")
    di.add_argument("--alpha", type=float, default=0.5, help="weight of the ground-truth cross-entropy (eq. 37)")
    add_training_args(di, steps=1000, lr=1e-3, eval_every=100, stride=10, window_from="teacher")
    di.add_argument("--resume", action="store_true",
                    help="continue from OUT.state (written at every validation), e.g. with a larger --time-budget-min")


def add_export(sub) -> None:
    """``ws export``."""
    ex = command(sub, "export", cmd_export,
                 help="export a WestWorld to ONNX (dynamic or fixed batch) and check parity with ONNX Runtime",
                 description="Write an ONNX graph (opset 17; inputs hist_states (1, Th, Cs), one history "
                             "shared by the batch, and actions (batch, Th+H, Ca), output pred_states "
                             "(batch, H, Cs), physical units; see ws_distill/export.py), check it with "
                             "onnx.checker, and print the largest "
                             "difference between ONNX Runtime and PyTorch on the same inputs. MPPI runs it "
                             "with 'ws mppi run --dynamics MODEL.onnx'.")
    ex.add_argument("--checkpoint", type=Path, required=True, help="WestWorld checkpoint (teacher or student)")
    ex.add_argument("--system", default="", help="system to serve (default: the checkpoint's only one)")
    ex.add_argument("--horizon", type=int, default=20, help="predicted steps H (the MPPI horizon)")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--per-sample-history", action="store_true",
                    help="take a history per sample, hist_states (batch, Th, Cs) (default: one history for the "
                         "batch, run once, as MPPI needs; faster)")
    ex.add_argument("--scan", choices=["unrolled", "vectorised", "parallel"], default="unrolled",
                    help="how the selective scan is written: one step's state at a time (unrolled, 14 operators a "
                         "step), every step's decay and input at once and 2 operators a step (vectorised: fastest for "
                         "small students on ONNX Runtime), or log-depth (parallel); the outputs agree to float rounding")
    ex.add_argument("--batch", type=int, default=None,
                    help="fix the batch at the planner's samples K, so that ONNX Runtime folds the graph's shape "
                         "arithmetic (fewer operators per call); other batches are still served, padded or in "
                         "pieces (default: a dynamic batch)")
    ex.add_argument("--out", type=Path, required=True, help="ONNX file")
