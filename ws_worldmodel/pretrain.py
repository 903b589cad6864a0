"""Multi-system pretraining of WestWorld and its baselines (seed 003, App. D.2), on one process or with DDP.

``ws pretrain`` reads a corpus (``ws corpus build``), splits every system's episodes into
training and validation (the last ``val_fraction`` of episodes), cuts windows of
``history + horizon`` steps, normalises each system by its training split's channel
ranges, and trains with AdamW, warmup-cosine learning rate, gradient clipping and early
stopping on the validation loss. Batches mix systems uniformly.

Data parallelism: run under ``torchrun --nproc_per_node N`` and every rank takes its share
of the *same* global batch (drawn from a generator seeded by the step), gradients are
averaged by ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA). Because the loss is a
mean of per-sample means, N ranks see exactly the loss of one process on the global batch.

Checkpoints: ``--out`` receives the best model (a :class:`TrajectoryWorldModel` payload: kind, config,
weights and every system's channel metadata and structural indices, loadable with
``ws_worldmodel.checkpoint.load_checkpoint``), and ``--out`` + ``.state`` the training state
(optimiser, scheduler, step, RNG) for ``--resume``. Both are written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ws_sim.channels import channels_from_records, channels_to_records, data_ranges
from ws_sim.dataset import TrajectoryDataset

from .checkpoint_io import FORMAT_TAG, FORMAT_VERSION, atomic_torch_save, code_version, read_payload, safe_torch_load
from .data import SystemData, collate, denormalise, normalise
from .mlp_ensemble import PaddedMLPEnsemble, PaddedMLPEnsembleConfig
from .tdm import TDM, TDMConfig
from .trajworld import TrajWorld, TrajWorldConfig
from .westworld import TrajectoryBatch, WestWorld, WestWorldConfig

__all__ = ["PretrainConfig", "TrajectoryWorldModel", "MODEL_KINDS", "split_episodes", "episode_subset", "system_windows", "pretrain",
           "GlobalSampler", "evaluate"]

#: trajectory world models trained and evaluated on the same data and protocol
MODEL_KINDS = {"westworld": (WestWorld, WestWorldConfig), "trajworld": (TrajWorld, TrajWorldConfig),
               "tdm": (TDM, TDMConfig), "padded_mlp_ensemble": (PaddedMLPEnsemble, PaddedMLPEnsembleConfig)}


def kind_of(cfg) -> str:
    """The model kind of a config instance."""
    for kind, (_, cfg_cls) in MODEL_KINDS.items():
        if type(cfg) is cfg_cls:
            return kind
    raise TypeError(f"unknown model config {type(cfg).__name__}")


class _LossModule(torch.nn.Module):
    """``forward(batch) -> loss``, so DistributedDataParallel sees the whole computation.

    ``loss_fn(net, batch)`` replaces ``net.loss(batch)`` (e.g. knowledge distillation)."""

    def __init__(self, net: torch.nn.Module, loss_fn=None):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, batch: TrajectoryBatch) -> torch.Tensor:
        return self.net.loss(batch) if self.loss_fn is None else self.loss_fn(self.net, batch)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PretrainConfig:
    """Training settings (the seed's values for lr, weight decay, batch size and warmup are
    blank in its text; these defaults are CPU-sized).

    Attributes:
        history, horizon: ``Th`` observed and ``H`` predicted steps (the seed: 50 and 100).
        batch_size: global batch (split evenly over DDP ranks).
        steps: maximum optimiser steps.
        lr, weight_decay, warmup, grad_clip: AdamW with linear warmup then cosine decay.
        eval_every: steps between validations (and checkpoints).
        patience: validations without improvement before stopping.
        val_fraction: share of each system's episodes kept for validation.
        stride: step between window starts.
        amp: bfloat16 autocast on CUDA.
        time_budget_s: stop after this much training wall-clock (seconds, summed over resumed runs; None:
            no limit), after a last validation; the cosine decay then follows whichever of the steps
            and the time is further along, so a budgeted run ends at the low learning rate.
        budget_clock: what ``time_budget_s`` counts: ``"wall"`` (wall-clock) or ``"cpu"`` (the process's CPU
            time divided by torch's thread count: the wall-clock the run would take with its cores to itself,
            so other jobs on a shared machine do not spend its budget; CPU training only).
    """

    history: int = 50
    horizon: int = 100
    batch_size: int = 16
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    eval_every: int = 200
    patience: int = 5
    val_fraction: float = 0.1
    stride: int = 10
    amp: bool = True
    time_budget_s: float | None = None
    budget_clock: str = "wall"

    def __post_init__(self):
        if self.budget_clock not in ("wall", "cpu"):
            raise ValueError(f"budget_clock must be 'wall' or 'cpu', got {self.budget_clock!r}")


def episode_subset(ds: TrajectoryDataset, start: int, stop: int) -> TrajectoryDataset:
    """Episodes ``start .. stop-1`` (by segment order) of a dataset.

    Raises:
        ValueError: the dataset has fewer than ``stop`` episodes.
    """
    bounds = ds.segment_bounds()
    if stop > len(bounds) or start >= stop:
        raise ValueError(f"system {ds.env!r} has {len(bounds)} episodes; asked for episodes {start}..{stop - 1}")
    sl = slice(bounds[start][0], bounds[stop - 1][1])
    return TrajectoryDataset(ds.observations[sl], ds.actions[sl], ds.rewards[sl], ds.next_observations[sl],
                             ds.terminals[sl], ds.timeouts[sl], list(ds.state_channels), list(ds.action_channels),
                             ds.env, dict(ds.attrs))


def split_episodes(ds: TrajectoryDataset, val_fraction: float) -> tuple[TrajectoryDataset, TrajectoryDataset]:
    """Split by whole segments: the last ``ceil(val_fraction * n)`` (at least one) go to validation."""
    bounds = ds.segment_bounds()
    if len(bounds) < 2:
        raise ValueError(f"system {ds.env!r} needs at least 2 episodes to split, has {len(bounds)}")
    n_val = min(len(bounds) - 1, max(1, math.ceil(val_fraction * len(bounds))))
    return episode_subset(ds, 0, len(bounds) - n_val), episode_subset(ds, len(bounds) - n_val, len(bounds))


def system_windows(ds: TrajectoryDataset, model, length: int, stride: int,
                   val_fraction: float) -> tuple[SystemData, SystemData]:
    """Train/validation windows of one system, both normalised by the training split's ranges."""
    train, val = split_episodes(ds, val_fraction)
    return windows_from_splits(train, [val], model, length, stride)


def windows_from_splits(train: TrajectoryDataset, others: Sequence[TrajectoryDataset], model, length: int,
                        stride: int, ranges_from: Sequence[TrajectoryDataset] | None = None) -> tuple[SystemData, ...]:
    """Windows of a training split and of other splits, all normalised by the channel ranges
    of the training split (or of the union of ``ranges_from``)."""
    train = dataclasses.replace(train)
    src = list(ranges_from) if ranges_from else [train]
    both = np.concatenate([np.concatenate([d.observations, d.next_observations]) for d in src])
    train.state_channels = data_ranges(train.state_channels, both)
    train.action_channels = data_ranges(train.action_channels, np.concatenate([d.actions for d in src]))
    return (SystemData.from_dataset(train, model, length, stride),
            *[SystemData.from_dataset(o, model, length, stride, ranges_from=train) for o in others])


def is_peft_parameter(name: str, n_blocks: int, last_k: int) -> bool:
    """Whether a WestWorld parameter trains under PEFT: the last ``last_k`` Sys-MoE blocks, the
    learnable queries, the output norm and head (seed 003 Table 11)."""
    if name == "query" or name.startswith(("head.", "ln_out.")):
        return True
    if name.startswith("blocks."):
        return int(name.split(".")[1]) >= n_blocks - last_k
    return False


class GlobalSampler:
    """The same global batch on every rank: ``(system, window)`` pairs drawn from ``(seed, step)``."""

    def __init__(self, systems: Sequence[SystemData], batch_size: int, seed: int):
        self.systems = list(systems)
        self.batch_size = batch_size
        self.seed = seed

    def items(self, step: int) -> list[tuple[SystemData, int]]:
        rng = np.random.default_rng([self.seed, step])
        which = rng.integers(len(self.systems), size=self.batch_size)
        return [(self.systems[k], int(rng.integers(len(self.systems[k])))) for k in which]


class TrajectoryWorldModel:
    """A trained trajectory world model (WestWorld, TrajWorld or TDM) with what it needs to
    serve the systems it was trained on in physical units.

    Attributes:
        net: the network (``loss(batch)``, ``predict(batch) -> (B, H, Cs)`` normalised).
        kind: ``"westworld"``, ``"trajworld"`` or ``"tdm"``.
        systems: name -> ``{"state_channels", "action_channels", "state_struct", "action_struct"}``.
        history, horizon: the window it was trained on.
    """

    def __init__(self, net: torch.nn.Module, systems: dict, history: int, horizon: int):
        self.net = net.eval()
        self.kind = kind_of(net.cfg)
        self.name = self.kind
        self.systems = systems
        self.history = history
        self.horizon = horizon
        #: run one history shared by every sample once (:meth:`predict`); False: once per sample (benchmarks)
        self.share_history = True

    def payload(self, info: dict | None = None) -> dict:
        return {"format": FORMAT_TAG, "version": FORMAT_VERSION, "model_type": self.kind,
                "config": dataclasses.asdict(self.net.cfg), "state_dict": self.net.state_dict(),
                "systems": {k: {"state_channels": channels_to_records(v["state_channels"]),
                                "action_channels": channels_to_records(v["action_channels"]),
                                "state_struct": np.asarray(v["state_struct"]).tolist(),
                                "action_struct": np.asarray(v["action_struct"]).tolist()}
                            for k, v in self.systems.items()},
                "history": self.history, "horizon": self.horizon, "code_version": code_version(),
                "info": info or {}}

    @classmethod
    def from_payload(cls, payload: dict) -> "TrajectoryWorldModel":
        net_cls, cfg_cls = MODEL_KINDS[payload["model_type"]]
        net = net_cls(cfg_cls(**payload["config"]))
        net.load_state_dict(payload["state_dict"])
        systems = {k: {"state_channels": channels_from_records(v["state_channels"]),
                       "action_channels": channels_from_records(v["action_channels"]),
                       "state_struct": np.asarray(v["state_struct"], dtype=np.int64),
                       "action_struct": np.asarray(v["action_struct"], dtype=np.int64)}
                   for k, v in payload["systems"].items()}
        return cls(net, systems, int(payload["history"]), int(payload["horizon"]))

    @torch.no_grad()
    def predict(self, system: str, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Predict the future of a known system in physical units.

        Args:
            system: a system name the model was trained on.
            states: ``(B, Th, Cs)`` observed states.
            actions: ``(B, Th + H, Ca)`` actions of history and future.

        A WestWorld or TrajWorld given one history for every sample (equal ``states`` rows and
        ``actions[:, :Th - 1]``, as MPPI's ``K`` futures from one past are) runs that history once
        (``shared_history``; the same predictions, fewer steps per sample).

        Returns:
            ``(B, H, Cs)`` predicted states.

        Raises:
            KeyError: unknown system.
        """
        meta = self.systems[system]
        b, th, cs = states.shape
        t = actions.shape[1]
        shared = (self.share_history and self.kind in ("westworld", "trajworld") and b > 1 and bool(np.all(states == states[:1]))
                  and bool(np.all(actions[:, :th - 1] == actions[:1, :th - 1])))
        s = torch.zeros(b, t, cs)
        s[:, :th] = torch.as_tensor(normalise(states, meta["state_channels"]), dtype=torch.float32)
        a = torch.as_tensor(normalise(actions, meta["action_channels"]), dtype=torch.float32)
        batch = TrajectoryBatch(s, a, torch.ones(b, cs, dtype=torch.bool), torch.ones(b, a.shape[2], dtype=torch.bool),
                                torch.as_tensor(meta["state_struct"]).expand(b, -1, -1),
                                torch.as_tensor(meta["action_struct"]).expand(b, -1, -1), th)
        pred = self.net.predict(batch, shared_history=True) if shared else self.net.predict(batch)
        return denormalise(pred, meta["state_channels"]).numpy()


    @property
    def can_imagine(self) -> bool:
        """Whether :meth:`imagine` runs for this kind (WestWorld: its one pass continued step by step)."""
        return self.kind == "westworld"

    @torch.no_grad()
    def imagine(self, system: str, states: np.ndarray, actions: np.ndarray):
        """A closed-loop imagination from one history, in physical units (a policy acting on each state
        the model predicts, as MPPI's expert sample does).

        Args:
            system: a system name the model was trained on.
            states: ``(Th, Cs)`` observed states, the last one now.
            actions: ``(Th - 1, Ca)`` the actions between them.

        Returns:
            ``step(action (Ca,)) -> (Cs,)``: the state that the action taken in the newest state leads to.
            Step ``j`` equals :meth:`predict`'s future step ``j`` given the actions stepped so far, at the
            cost of one step (``WestWorld.imagine``).

        Raises:
            KeyError: unknown system. TypeError: a kind without it (:attr:`can_imagine`). ValueError: shapes.
        """
        if not self.can_imagine:
            raise TypeError(f"{self.kind} has no one-pass imagination; predict step by step instead")
        meta = self.systems[system]
        states, actions = np.asarray(states, dtype=np.float64), np.asarray(actions, dtype=np.float64)
        th, cs = states.shape
        ca = len(meta["action_channels"])
        if th != self.history or cs != len(meta["state_channels"]) or actions.shape != (th - 1, ca):
            raise ValueError(f"imagine needs states ({self.history}, {len(meta['state_channels'])}) and actions "
                             f"({self.history - 1}, {ca}), got {states.shape} and {actions.shape}")
        s = torch.zeros(1, th + 1, cs)
        s[:, :th] = torch.as_tensor(normalise(states[None], meta["state_channels"]), dtype=torch.float32)
        a = torch.zeros(1, th + 1, ca)  # the history's actions, then placeholders (each step brings its own)
        if th > 1:
            a[:, :th - 1] = torch.as_tensor(normalise(actions[None], meta["action_channels"]), dtype=torch.float32)
        batch = TrajectoryBatch(s, a, torch.ones(1, cs, dtype=torch.bool), torch.ones(1, ca, dtype=torch.bool),
                                torch.as_tensor(meta["state_struct"])[None], torch.as_tensor(meta["action_struct"])[None],
                                th)
        im = self.net.imagine(batch)

        def step(action: np.ndarray) -> np.ndarray:
            act = np.asarray(action, dtype=np.float64).reshape(1, 1, ca)
            nxt = im.step(torch.as_tensor(normalise(act, meta["action_channels"]), dtype=torch.float32)[0])
            return denormalise(nxt[:, None], meta["state_channels"]).numpy()[0, 0]

        return step


def _ddp(device: str) -> tuple[int, int, bool]:
    """``(rank, world size, data-parallel?)`` under torchrun (NCCL for a CUDA ``device``, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, world > 1


@torch.no_grad()
def evaluate(net: torch.nn.Module, systems: Sequence[SystemData], history: int, max_windows: int = 64,
             device: str = "cpu") -> dict:
    """Loss and normalised MAE/MSE of the ``H``-step prediction (autoregressive for the
    baselines, one pass for WestWorld) over up to ``max_windows`` windows per system, and the MAE
    of holding the last observed state on the same windows (``hold_last_mae``)."""
    was_training = net.training
    net.eval()
    out = {}
    for sysd in systems:
        idx = np.linspace(0, len(sysd) - 1, min(len(sysd), max_windows)).astype(int)
        batch = collate([(sysd, int(i)) for i in idx], history).to(device)
        loss = float(net.loss(batch))
        err = net.predict(batch) - batch.states[:, history:]
        hold = batch.states[:, history - 1:history] - batch.states[:, history:]  # holding the last observed state
        out[sysd.name] = {"loss": loss, "mae": float(err.abs().mean()), "mse": float(err.square().mean()),
                          "hold_last_mae": float(hold.abs().mean())}
    net.train(was_training)
    return out


def pretrain(train: Sequence[SystemData], val: Sequence[SystemData], model_cfg,
             cfg: PretrainConfig, out: str | os.PathLike | None, seed: int = 0, resume: bool = False,
             progress: bool = True, device: str | None = None,
             init_from: "TrajectoryWorldModel | None" = None, peft_blocks: int | None = None,
             loss_fn=None) -> dict:
    """Train a trajectory world model on mixed systems.

    Args:
        train, val: windows per system (from :func:`system_windows`), all of length
            ``cfg.history + cfg.horizon``.
        model_cfg: the network: a ``WestWorldConfig``, ``TrajWorldConfig`` or ``TDMConfig``.
        cfg: the optimisation.
        out: checkpoint path (None: no files).
        seed: seeds the initial weights and the batch stream.
        resume: continue from ``out + ".state"`` if it exists.
        progress: tqdm bar (rank 0).
        device: ``"cuda"`` or ``"cpu"`` (default: CUDA when present).
        init_from: start from these weights (fine-tuning); its kind and config must match.
        peft_blocks: parameter-efficient fine-tuning (seed 003 Table 11): train only the last
            ``peft_blocks`` blocks, the queries and the output head (WestWorld only).
        loss_fn: ``loss_fn(net, batch) -> loss`` for training instead of ``net.loss`` (the
            validation loss stays ``net.loss``); ``ws_distill.distill`` passes the KD loss.

    Returns:
        history: ``{"losses": [...], "evals": [...], "best_val_loss", "steps"}`` where
        ``losses[0]`` is the first step's global-batch loss (averaged over ranks).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, ddp = _ddp(device)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must divide evenly over {world} ranks")
    if device == "cuda" and ddp:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.manual_seed(seed)
    net_cls, _ = MODEL_KINDS[kind_of(model_cfg)]
    net = net_cls(model_cfg)
    if init_from is not None:
        if init_from.kind != kind_of(model_cfg) or dataclasses.asdict(init_from.net.cfg) != dataclasses.asdict(model_cfg):
            raise ValueError(f"cannot fine-tune a {init_from.kind} with config {dataclasses.asdict(init_from.net.cfg)} "
                             f"as a {kind_of(model_cfg)} with {dataclasses.asdict(model_cfg)}")
        net.load_state_dict(init_from.net.state_dict())
    if peft_blocks is not None:
        if kind_of(model_cfg) != "westworld":
            raise ValueError("parameter-efficient fine-tuning is defined for WestWorld only")
        for name, p in net.named_parameters():
            p.requires_grad_(is_peft_parameter(name, model_cfg.n_blocks, peft_blocks))
    net = net.to(device)
    model = _LossModule(net, loss_fn)
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)

    if cfg.budget_clock == "cpu" and device != "cpu":
        raise ValueError("budget_clock 'cpu' counts CPU time: for training on the CPU (use 'wall' on a GPU)")
    clock = {"spent_s": 0.0}  # the budget's clock so far, this run's and resumed runs'

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        if cfg.time_budget_s:
            frac = max(frac, clock["spent_s"] / cfg.time_budget_s)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    sampler = GlobalSampler(train, cfg.batch_size, seed)
    systems_meta = {s.name: {"state_channels": s.state_channels, "action_channels": s.action_channels,
                             "state_struct": s.state_struct, "action_struct": s.action_struct} for s in train}
    history = {"losses": [], "evals": [], "best_val_loss": float("inf"), "steps": 0, "wall_s": 0.0, "cpu_s": 0.0}
    start, since = 0, 0
    state_path = Path(f"{out}.state") if out else None
    if resume and state_path is not None and state_path.is_file():
        st = safe_torch_load(state_path, map_location=device, what="training state")  # never runs code
        net.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, history, since = st["step"], st["history"], st["since"]
        history.setdefault("wall_s", 0.0)
        history.setdefault("cpu_s", history["wall_s"])  # a run from before the CPU clock: its wall-clock
        clock["spent_s"] = history[f"{cfg.budget_clock}_s"]
        # the schedule follows this run's cfg.steps (resuming may extend training)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * lr_at(start)
        if rank == 0:
            log.info("resumed from %s at step %d", state_path, start)
    use_amp = cfg.amp and device == "cuda"
    bar = tqdm(range(start, cfg.steps), desc=f"pretrain {kind_of(model_cfg)}", unit="step", disable=not progress or rank != 0,
               initial=start, total=cfg.steps)
    net.train()
    tic, wall_before = time.perf_counter(), history["wall_s"]
    cpu_tic, cpu_before, threads = time.process_time(), history["cpu_s"], max(1, torch.get_num_threads())

    def tick() -> None:
        history["wall_s"] = wall_before + time.perf_counter() - tic
        history["cpu_s"] = cpu_before + (time.process_time() - cpu_tic) / threads
        clock["spent_s"] = history[f"{cfg.budget_clock}_s"]

    for step in bar:
        tick()
        items = sampler.items(step)[rank::world]
        batch = collate(items, cfg.history).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        sched.step()
        logged = loss.detach()
        if ddp:
            torch.distributed.all_reduce(logged)
            logged = logged / world
        history["losses"].append(float(logged))
        history["steps"] = step + 1
        bar.set_postfix(loss=f"{float(logged):.3f}")
        tick()
        out_of_time = bool(cfg.time_budget_s) and clock["spent_s"] >= cfg.time_budget_s
        if ddp and cfg.time_budget_s:  # every rank stops at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last = step + 1 == cfg.steps or out_of_time
        if (step + 1) % cfg.eval_every == 0 or last:
            ev = evaluate(net, val, cfg.history, device=device)
            vloss = float(np.mean([v["loss"] for v in ev.values()]))
            history["evals"].append({"step": step + 1, "wall_s": history["wall_s"], "cpu_s": history["cpu_s"],
                                     "clock": cfg.budget_clock, "val_loss": vloss,
                                     "val_mae": float(np.mean([v["mae"] for v in ev.values()])), "systems": ev})
            improved = vloss < history["best_val_loss"] - 1e-6
            if improved:
                history["best_val_loss"], since = vloss, 0
            else:
                since += 1
            if rank == 0 and out is not None:
                if improved:
                    info = {"pretrain": dataclasses.asdict(cfg), "step": step + 1, "val": ev, "seed": seed}
                    atomic_torch_save(TrajectoryWorldModel(net, systems_meta, cfg.history, cfg.horizon).payload(info), out)
                    net.train()
                atomic_torch_save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "step": step + 1, "history": history,
                                   "since": since}, state_path)
                write_curve(history["evals"], out)  # a run stopped or killed later keeps its curve so far
            if since >= cfg.patience:
                if rank == 0:
                    log.info("early stop at step %d (best val loss %.4f)", step + 1, history["best_val_loss"])
                break
        if out_of_time:
            if rank == 0:
                log.info("time budget of %.0f s spent at step %d", cfg.time_budget_s, step + 1)
            break
    bar.close()
    return history


def write_curve(evals: list, out: str | os.PathLike) -> Path:
    """Write a run's validations (``history["evals"]``: step, wall and CPU clocks, validation loss and MAE,
    per system) to ``OUT.curve.json`` atomically, for ``ws eval curves``; returns the path."""
    import json

    curve = Path(f"{out}.curve.json")
    tmp = curve.with_name(f".{curve.name}.tmp")
    tmp.write_text(json.dumps(evals))
    os.replace(tmp, curve)
    return curve


def load_pretrained(path: str | os.PathLike) -> TrajectoryWorldModel:
    """Load a checkpoint written by :func:`pretrain` (read with ``weights_only=True``; never runs code).

    Raises:
        CheckpointError: missing, corrupt, not a safe checkpoint (its unpickling would run code;
            refused before anything runs) or not a WorldScape checkpoint; the message names the path.
    """
    return TrajectoryWorldModel.from_payload(read_payload(path))
