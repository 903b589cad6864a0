"""Training of the MLPEnsemble dynamics model (seed 003, Appendix D.1-D.2).

Each member sees its own bootstrap resample of the training transitions; after every epoch
the members are scored on the validation split, the best ``elites`` are kept, and training
stops when the elites' validation error has not improved for ``patience`` epochs (the best
weights are restored).

Long runs are resumable: with a ``state_path`` the live training state (weights, Adam moments,
the best weights so far, the random generators, the epoch) is written atomically after every
epoch, and ``resume=True`` continues from it to the same weights an uninterrupted run reaches.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ws_sim.dataset import TrajectoryDataset

from .checkpoint_io import CheckpointError, atomic_torch_save, safe_torch_load
from .errors import WorldModelError
from .mlp_ensemble import MLPEnsemble, MLPEnsembleConfig

__all__ = ["train_mlp_ensemble", "one_step_errors"]

log = logging.getLogger(__name__)


def _tensors(ds: TrajectoryDataset):
    return (torch.as_tensor(ds.observations, dtype=torch.float32),
            torch.as_tensor(ds.actions, dtype=torch.float32),
            torch.as_tensor(ds.next_observations, dtype=torch.float32))


def one_step_errors(model: MLPEnsemble, ds: TrajectoryDataset) -> dict:
    """One-step prediction MSE of the model and of the 'unchanged state' baseline.

    Both are computed in the model's normalised delta space (per-channel standardised), so
    every channel counts alike; the baseline predicts ``s_{t+1} = s_t``.

    Returns:
        ``{"model_mse": float, "unchanged_mse": float}``.
    """
    s, a, s2 = _tensors(ds)
    with torch.no_grad():
        pred = model.predict(s, a)
        err = ((pred - s2) / model.out_std) ** 2
        base = ((s - s2) / model.out_std) ** 2
    return {"model_mse": float(err.mean()), "unchanged_mse": float(base.mean())}


# settings a resumed run may change (the rest must match the saved state's)
_RESUMABLE_CHANGES = ("epochs", "patience")


def _rng_state(rng: np.random.Generator) -> dict:
    st = rng.bit_generator.state  # PCG64's 128-bit integers as text: plain data however large
    return {"bit_generator": st["bit_generator"], "state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])}


def _set_rng_state(rng: np.random.Generator, st: dict) -> None:
    rng.bit_generator.state = {"bit_generator": st["bit_generator"],
                               "state": {"state": int(st["state"]), "inc": int(st["inc"])},
                               "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}


@torch.enable_grad()
def train_mlp_ensemble(train: TrajectoryDataset, val: TrajectoryDataset, config: MLPEnsembleConfig,
                       seed: int = 0, progress: bool = True, device: str = "cpu",
                       val_subsample: int = 65536, state_path: str | os.PathLike | None = None,
                       resume: bool = False, time_budget_s: float | None = None,
                       init: MLPEnsemble | None = None) -> tuple[MLPEnsemble, dict]:
    """Train an :class:`MLPEnsemble` on full-state transitions.

    Args:
        train, val: datasets of the same channels (checked).
        config: architecture and optimiser settings.
        seed: seeds torch and the bootstrap.
        progress: show a tqdm bar over epochs.
        device: where the model and batches live while training (``"cpu"``, ``"cuda"``); the
            model is returned on the CPU.
        val_subsample: the elites are chosen and early stopping judged on a fixed random subset
            of at most this many validation transitions (0: all), so that an epoch's scoring does
            not outweigh its training on large splits; the final one-step errors use them all.
        state_path: where the live training state is written (atomically) after every epoch,
            for ``resume`` (None: not written; ``ws train`` uses ``OUT.state``).
        resume: continue from ``state_path`` (the same data, seed and settings; only
            ``epochs`` and ``patience`` may change, for instance to extend a run).
        time_budget_s: stop after the first epoch that ends past this many seconds of this
            call's wall-clock (None: no limit); the returned model is the best so far and
            ``history["stopped"]`` says ``"time budget"``, so a resumed call goes on from there.
        init: start from this model's weights and normalisation instead of fresh ones (fine-tuning,
            e.g. on its own planner's data added to what it was trained on); its architecture
            must be ``config``'s and its channels the data's. Elites are chosen again.

    Returns:
        ``(model, history)`` with per-epoch validation MSE of the elites, the final one-step
        errors on the validation split, and ``stopped``: ``"epochs"``, ``"early stop"`` or
        ``"time budget"``.

    Raises:
        ChannelMismatchError: the two splits have different channels.
        ValueError: an empty split; ``resume`` without a ``state_path``.
        WorldModelError: an ``init`` of another architecture than ``config``'s (a ``ValueError``).
        CheckpointError: ``resume`` and the state file is missing, unsafe, or was written for
            other data, another seed or other settings (the message names what differs).
    """
    val.check_matches(train.state_channels, train.action_channels, "validation dataset")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"empty split: {len(train)} training and {len(val)} validation transitions")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MLPEnsemble(train.state_channels, train.action_channels, config)
    s, a, s2 = _tensors(train)
    x = model.model_inputs(s, a)
    y = s2 - s
    if init is None:
        model.set_normalisation(MLPEnsemble.fit_normalisation(x.numpy(), y.numpy()))
    else:  # the initial model's weights and the normalisation they were trained with
        init.check_matches(train.state_channels, train.action_channels, "initial model")
        arch = ("ensemble_size", "hidden", "layers")
        if any(getattr(init.config, k) != getattr(config, k) for k in arch):
            raise WorldModelError("the initial model's architecture ("
                             + ", ".join(f"{k} {getattr(init.config, k)}" for k in arch) + ") is not the config's ("
                             + ", ".join(f"{k} {getattr(config, k)}" for k in arch) + ")")
        state = {k: v for k, v in init.state_dict().items() if k != "elite_idx"}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if set(missing) != {"elite_idx"} or unexpected:
            raise WorldModelError(f"the initial model does not fit the config: missing {missing}, "
                                  f"unexpected {unexpected}")
    xn = ((x - model.in_mean) / model.in_std).to(device)
    yn = ((y - model.out_mean) / model.out_std).to(device)
    model.to(device)
    vs, va, vs2 = _tensors(val)
    if val_subsample and len(vs) > val_subsample:
        pick = torch.as_tensor(np.sort(rng.choice(len(vs), size=val_subsample, replace=False)))
        vs, va, vs2 = vs[pick], va[pick], vs2[pick]
    vs, va, vs2 = vs.to(device), va.to(device), vs2.to(device)
    n = len(xn)
    e = config.ensemble_size
    boot = torch.as_tensor(rng.integers(0, n, size=(e, n)))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = max(1, n // config.batch_size)
    if config.max_steps_per_epoch:
        steps = min(steps, config.max_steps_per_epoch)
    best, best_state, since, history, start = float("inf"), None, 0, [], 0
    ident = {"seed": seed, "train_transitions": n, "val_transitions": len(val), "val_subsample": val_subsample,
             "data_sums": [round(float(t.double().sum()), 6) for t in (x, y, vs, vs2)],
             "init": None if init is None else round(float(sum(p.detach().double().sum() for p in init.parameters())), 6),
             "config": {k: v for k, v in dataclasses.asdict(config).items()
                        if k not in _RESUMABLE_CHANGES or (k == "epochs" and config.lr_schedule != "constant")}}
    # the cosine schedule is laid over the planned epochs, so those cannot change on resume
    sched = None
    if config.lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps, eta_min=config.lr_min)
    if resume:
        if state_path is None:
            raise ValueError("resume needs a state_path")
        st = safe_torch_load(state_path, what="training state")
        if st.get("ident") != ident:
            saved = st.get("ident") or {}
            diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
            raise CheckpointError(f"training state {state_path} was written for another run: {', '.join(diff)} "
                                  f"differ (saved {[saved.get(k) for k in diff]}, now {[ident.get(k) for k in diff]})")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if sched is not None:
            sched.load_state_dict(st["scheduler"])
        _set_rng_state(rng, st["numpy_rng"])
        torch.set_rng_state(st["torch_rng"])
        best, best_state, since, history = st["best"], st["best_state"], st["since"], st["history"]
        start = len(history)
        log.info("resumed from %s after epoch %d", state_path, start)

    def save_state() -> None:
        atomic_torch_save({"ident": ident, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": None if sched is None else sched.state_dict(),
                           "numpy_rng": _rng_state(rng), "torch_rng": torch.get_rng_state(), "best": best,
                           "best_state": best_state, "since": since, "history": history}, state_path)

    tic, stopped = time.perf_counter(), "epochs"
    bar = tqdm(range(start, config.epochs), desc="train mlp_ensemble", unit="epoch", disable=not progress,
               initial=start, total=config.epochs)
    if resume and since >= config.patience:
        stopped = "early stop"  # the saved run had stopped early and the patience was not raised
        bar = []
    for epoch in bar:
        model.train()
        perm = torch.as_tensor(rng.permuted(np.tile(np.arange(n), (e, 1)), axis=1))
        for k in range(steps):
            cols = perm[:, k * config.batch_size:(k + 1) * config.batch_size]
            idx = torch.gather(boot, 1, cols).to(device)
            loss = model.nll_loss(xn[idx], yn[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        model.eval()
        mse = model.member_mse(vs, va, vs2)
        elites = torch.argsort(mse)[: config.elites]
        score = float(mse[elites].mean())
        history.append({"epoch": epoch, "train_nll": float(loss.detach()), "val_mse_elites": score,
                        "lr": opt.param_groups[0]["lr"]})
        bar.set_postfix(val_mse=f"{score:.4f}")
        if score < best - 1e-6:
            best, since = score, 0
            model.elite_idx.copy_(elites)
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
        if state_path is not None:
            save_state()
        if since >= config.patience:
            log.info("early stop at epoch %d (best val mse %.5f)", epoch, best)
            stopped = "early stop"
            break
        if time_budget_s is not None and time.perf_counter() - tic >= time_budget_s and epoch + 1 < config.epochs:
            log.info("time budget spent after epoch %d (best val mse %.5f)", epoch, best)
            stopped = "time budget"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu")
    errors = one_step_errors(model, val)
    return model, {"epochs": history, "stopped": stopped, "best_val_mse_elites": best, "val_one_step": errors,
                   "train_transitions": n, "val_transitions": len(val), "val_scored_transitions": len(vs)}
