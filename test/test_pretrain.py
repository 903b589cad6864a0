"""WestWorld pretraining: learning, checkpoints, resumption and DDP (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ws_sim.corpus import build_corpus, load_system, make_system
from ws_worldmodel.checkpoint import load_checkpoint
from ws_worldmodel.pretrain import PretrainConfig, pretrain, system_windows
from ws_worldmodel.westworld import WestWorldConfig

SYSTEMS = ["dmc-cartpole-swingup", "dmc-reacher-easy"]
TINY = WestWorldConfig(d_model=32, n_heads=4, n_blocks=1, n_experts=2, expert_hidden=32, bins=32, d_state=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus")
    build_corpus(path, SYSTEMS, episodes=4, episodes_per_shard=2, steps=40, behaviours=("random", "pink"),
                 progress=False)
    return path


def _windows(corpus, cfg):
    pairs = [system_windows(load_system(corpus, n), make_system(n).model, cfg.history + cfg.horizon, cfg.stride, 0.25)
             for n in SYSTEMS]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_pretraining_learns_and_its_checkpoint_serves_physical_units(corpus, tmp_path):
    cfg = PretrainConfig(history=6, horizon=6, batch_size=8, steps=150, lr=1e-2, warmup=5, eval_every=75, stride=2)
    train, val = _windows(corpus, cfg)
    hist = pretrain(train, val, TINY, cfg, tmp_path / "ww.pt", progress=False)
    assert np.mean(hist["losses"][-10:]) < 0.85 * np.mean(hist["losses"][:3])
    model = load_checkpoint(tmp_path / "ww.pt")
    assert set(model.systems) == set(SYSTEMS)
    ds = load_system(corpus, "dmc-cartpole-swingup")
    s = ds.observations[None, :6].astype(np.float64)
    a = ds.actions[None, :12].astype(np.float64)
    pred = model.predict("dmc-cartpole-swingup", s, a)
    assert pred.shape == (1, 6, 4) and np.all(np.isfinite(pred))
    # in physical units: the predicted cart position stays within the data's range
    lo, hi = ds.observations[:, 0].min(), ds.observations[:, 0].max()
    assert lo - 0.1 <= pred[..., 0].min() and pred[..., 0].max() <= hi + 0.1


def test_resume_continues_where_it_stopped(corpus, tmp_path):
    cfg = PretrainConfig(history=4, horizon=4, batch_size=4, steps=6, warmup=2, eval_every=3, stride=4)
    train, val = _windows(corpus, cfg)
    full = pretrain(train, val, TINY, cfg, tmp_path / "a.pt", progress=False)
    part = pretrain(train, val, TINY, dataclasses_replace(cfg, steps=3), tmp_path / "b.pt", progress=False)
    assert part["steps"] == 3
    # the curve so far is written at every validation, so a stopped or killed run keeps it
    assert [e["step"] for e in json.loads((tmp_path / "b.pt.curve.json").read_text())] == [3]
    resumed = pretrain(train, val, TINY, cfg, tmp_path / "b.pt", resume=True, progress=False)
    assert resumed["steps"] == 6
    np.testing.assert_allclose(resumed["losses"], full["losses"], rtol=1e-5)
    assert [e["step"] for e in json.loads((tmp_path / "b.pt.curve.json").read_text())] == [3, 6]


def test_a_time_budget_ends_training_with_a_validation_and_wall_clock_adds_up_over_resumes(corpus, tmp_path):
    """``time_budget_s`` (``--time-budget-min``): once spent, the run validates, checkpoints and stops; every
    validation records the training wall-clock and the mean normalised MAE (learning curves against time),
    and a resumed run adds its time to the earlier one's."""
    cfg = PretrainConfig(history=4, horizon=4, batch_size=4, steps=50, warmup=2, eval_every=25, stride=4,
                         time_budget_s=1e-9)  # spent by the first step
    train, val = _windows(corpus, cfg)
    first = pretrain(train, val, TINY, cfg, tmp_path / "t.pt", progress=False)
    assert first["steps"] == 1 and len(first["evals"]) == 1 and (tmp_path / "t.pt").is_file()
    ev = first["evals"][0]
    assert ev["wall_s"] > 0 and ev["val_mae"] == pytest.approx(np.mean([v["mae"] for v in ev["systems"].values()]))
    again = pretrain(train, val, TINY, cfg, tmp_path / "t.pt", resume=True, progress=False)
    assert again["steps"] == 2 and len(again["evals"]) == 2
    assert again["evals"][1]["wall_s"] >= again["evals"][0]["wall_s"] == ev["wall_s"]
    # the CPU clock (the process's CPU time over its threads): a budget that other jobs on the cores cannot spend
    busy = dataclasses_replace(cfg, time_budget_s=3600.0, budget_clock="cpu", steps=3, eval_every=3)
    hist = pretrain(train, val, TINY, busy, tmp_path / "c.pt", progress=False)
    e = hist["evals"][-1]
    assert hist["steps"] == 3 and e["clock"] == "cpu" and 0 < e["cpu_s"] and 0 < e["wall_s"]
    spent = dataclasses_replace(busy, time_budget_s=1e-9)
    assert pretrain(train, val, TINY, spent, tmp_path / "d.pt", progress=False)["steps"] == 1
    with pytest.raises(ValueError, match="budget_clock"):
        PretrainConfig(budget_clock="gpu")


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_ddp_with_two_gloo_processes_matches_one_process_first_loss(corpus, tmp_path):
    args = ["pretrain", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--history", "4", "--horizon", "4",
            "--stride", "4", "--steps", "1", "--batch-size", "4", "--d-model", "32", "--blocks", "1", "--experts", "2",
            "--expert-hidden", "32", "--bins", "32", "--threads", "1", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "ws_cli.main", *args, "--out", str(tmp_path / "one.pt")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ws_cli.main", *args, "--out", str(tmp_path / "two.pt")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = json.loads(single.stdout.strip().splitlines()[-1])
    two = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert one["first_loss"] == pytest.approx(two["first_loss"], rel=1e-5)
    assert torch.load(tmp_path / "two.pt", weights_only=True)["model_type"] == "westworld"


def test_zero_shot_protocol_compares_models_on_unseen_systems(corpus, tmp_path, capsys):
    from ws_cli.main import main

    build_corpus(corpus, ["gym-walker2d"], episodes=2, episodes_per_shard=2, steps=30, behaviours=("pink",),
                 progress=False)
    common = ["--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--history", "4", "--horizon", "4",
              "--stride", "4", "--steps", "3", "--batch-size", "4", "--d-model", "32", "--blocks", "1",
              "--bins", "32", "--expert-hidden", "32", "--eval-every", "3", "--threads", "1"]
    for kind in ("westworld", "trajworld", "tdm"):  # one on the CPU clock: its curve is drawn against that
        clock = ["--time-budget-min", "60", "--budget-clock", "cpu"] if kind == "westworld" else []
        assert main(["pretrain", "--model", kind, "--out", str(tmp_path / f"{kind}.pt"), *common, *clock]) == 0
    # the padded MLPEnsemble is sized from the pretraining systems (4 channels): too small for walker2d
    assert main(["pretrain", "--model", "mlp_ensemble", "--out", str(tmp_path / "small_mlp.pt"), *common]) == 0
    assert main(["pretrain", "--model", "mlp_ensemble", "--max-state-dim", "18", "--max-action-dim", "6",
                 "--out", str(tmp_path / "mlp_ensemble.pt"), *common]) == 0
    capsys.readouterr()
    # every run wrote its validations against wall-clock beside its checkpoint: one plot compares them
    runs = ",".join(f"{k}={tmp_path / k}.pt.curve.json" for k in ("westworld", "trajworld", "tdm", "mlp_ensemble"))
    assert main(["eval", "curves", "--runs", runs, "--out", str(tmp_path / "curves")]) == 0
    curves = json.loads((tmp_path / "curves" / "curves.json").read_text())
    assert (tmp_path / "curves" / "curves.png").stat().st_size > 0
    assert {curves["summary"][k]["steps"] for k in ("westworld", "trajworld", "tdm", "mlp_ensemble")} == {3}
    assert (curves["summary"]["westworld"]["clock"], curves["summary"]["trajworld"]["clock"]) == ("cpu", "wall")
    assert curves["summary"]["hold_last_state"] > 0 and "best MAE" in capsys.readouterr().out
    assert main(["eval", "curves", "--runs", f"x={tmp_path / 'none.json'}", "--out", str(tmp_path / "c2")]) == 2
    assert main(["eval", "zero-shot", "--corpus", str(corpus), "--checkpoints", str(tmp_path / "small_mlp.pt"),
                 "--systems", "gym-walker2d", "--history", "5", "--horizon", "5", "--out", str(tmp_path / "bad")]) == 2
    assert "exceeds the padded sizes 4 / 2" in capsys.readouterr().err
    ckpts = ",".join(f"{k}={tmp_path / k}.pt" for k in ("westworld", "trajworld", "tdm", "mlp_ensemble"))
    assert main(["eval", "zero-shot", "--corpus", str(corpus), "--checkpoints", ckpts, "--systems", "gym-walker2d",
                 "--history", "5", "--horizon", "5", "--stride", "10", "--normalisation", "dataset",
                 "--out", str(tmp_path / "zs")]) == 0
    table = capsys.readouterr().out
    assert "| westworld |" in table and "| trajworld |" in table and "| tdm |" in table
    out = json.loads((tmp_path / "zs" / "zero_shot.json").read_text())
    assert out["normalisation"] == "dataset"  # every state in [0, 1]: errors below 1
    res = out["results"]
    for kind in ("westworld", "trajworld", "tdm", "mlp_ensemble", "hold-last-state"):
        r = res[kind]["gym-walker2d"]
        assert r["segments"] >= 2 and 0 < r["mae"] < 1 and r["mse"] <= r["mae"]
    assert res["hold-last-state"]["gym-walker2d"]["segments"] == res["tdm"]["gym-walker2d"]["segments"]
    assert (tmp_path / "zs" / "zero_shot_gym-walker2d.png").stat().st_size > 10_000
    # an MLPEnsemble checkpoint is not a trajectory world model
    from ws_worldmodel.checkpoint import DEFAULT_CHECKPOINTS

    assert main(["eval", "zero-shot", "--corpus", str(corpus), "--checkpoints", str(DEFAULT_CHECKPOINTS["hopper"]),
                 "--systems", "gym-walker2d", "--out", str(tmp_path / "x")]) == 2
    assert "is not a trajectory world model" in capsys.readouterr().err


def test_pretrain_names_systems_too_short_for_a_window(corpus, tmp_path, capsys):
    from ws_cli.main import main

    assert main(["pretrain", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--history", "30",
                 "--horizon", "30", "--out", str(tmp_path / "x.pt"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "no system of ['dmc-cartpole-swingup', 'dmc-reacher-easy'] has episodes of 60 steps" in err
    assert not (tmp_path / "x.pt").exists()


def test_few_shot_fine_tunes_from_pretrained_and_from_scratch(corpus, tmp_path, capsys):
    from ws_cli.main import main

    build_corpus(corpus, ["dmc-acrobot-swingup"], episodes=5, episodes_per_shard=5, steps=30, behaviours=("pink",),
                 progress=False)
    assert main(["pretrain", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--history", "4", "--horizon",
                 "4", "--stride", "4", "--steps", "4", "--batch-size", "4", "--d-model", "32", "--blocks", "1",
                 "--experts", "2", "--expert-hidden", "32", "--bins", "32", "--eval-every", "2",
                 "--out", str(tmp_path / "ww.pt"), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "few-shot", "--corpus", str(corpus), "--checkpoint", str(tmp_path / "ww.pt"), "--system",
                 "dmc-acrobot-swingup", "--train-episodes", "1,2", "--val-episodes", "1", "--test-episodes", "1",
                 "--history", "4", "--horizon", "4", "--stride", "4", "--steps", "6", "--eval-every", "3",
                 "--batch-size", "4", "--out", str(tmp_path / "fs"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| episodes | pretrained MAE" in out
    res = json.loads((tmp_path / "fs" / "few_shot.json").read_text())["results"]
    assert set(res) == {"1", "2"}
    for r in res.values():
        assert 0 < r["pretrained"]["mse"] < 1 and 0 < r["scratch"]["mse"] < 1
        assert r["pretrained"] != r["scratch"]
    assert (tmp_path / "fs" / "few_shot_curve.png").is_file()
    # not enough episodes: one clear line
    assert main(["eval", "few-shot", "--corpus", str(corpus), "--checkpoint", str(tmp_path / "ww.pt"), "--system",
                 "dmc-acrobot-swingup", "--train-episodes", "10", "--out", str(tmp_path / "fs2"), "--threads", "1"]) == 2
    assert "has 5 episodes; need 10 + 5 + 5" in capsys.readouterr().err


def test_peft_trains_only_the_last_blocks_queries_and_head(corpus, tmp_path):
    from ws_worldmodel.pretrain import is_peft_parameter

    cfg = PretrainConfig(history=4, horizon=4, batch_size=4, steps=3, warmup=1, eval_every=3, stride=4)
    train, val = _windows(corpus, cfg)
    two = WestWorldConfig(**{**TINY.__dict__, "n_blocks": 2})
    pretrain(train, val, two, cfg, tmp_path / "base.pt", progress=False)
    base = load_checkpoint(tmp_path / "base.pt")
    before = {k: v.clone() for k, v in base.net.state_dict().items()}
    pretrain(train, val, two, cfg, tmp_path / "peft.pt", progress=False, init_from=base, peft_blocks=1)
    after = load_checkpoint(tmp_path / "peft.pt").net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(is_peft_parameter(k, 2, 1) for k in changed)
    assert any(k.startswith("blocks.1.") for k in changed) and not any(k.startswith("blocks.0.") for k in changed)


def test_routing_plot_per_system(corpus, tmp_path, capsys):
    from ws_cli.main import main

    assert main(["pretrain", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--history", "4", "--horizon",
                 "4", "--stride", "4", "--steps", "2", "--batch-size", "4", "--d-model", "32", "--blocks", "2",
                 "--experts", "3", "--expert-hidden", "32", "--bins", "32", "--eval-every", "2",
                 "--out", str(tmp_path / "ww.pt"), "--threads", "1"]) == 0
    assert main(["eval", "routing", "--corpus", str(corpus), "--checkpoint", str(tmp_path / "ww.pt"), "--stride", "4",
                 "--out", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r" / "routing.json").read_text())
    assert set(res) == set(SYSTEMS)
    for blocks in res.values():
        assert len(blocks) == 2 and all(abs(sum(b) - 1) < 1e-5 and len(b) == 3 for b in blocks)
    assert (tmp_path / "r" / "routing.png").stat().st_size > 5_000


def test_scalability_sweep_writes_error_against_n(corpus, tmp_path, capsys):
    from ws_cli.main import main

    assert main(["eval", "scalability", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--ns", "1,2",
                 "--steps-per-env", "2", "--history", "4", "--horizon", "4", "--stride", "4", "--batch-size", "4",
                 "--d-model", "32", "--blocks", "1", "--expert-hidden", "32", "--bins", "32", "--threads", "1",
                 "--out", str(tmp_path / "sc")]) == 0
    res = json.loads((tmp_path / "sc" / "scalability.json").read_text())["results"]
    assert set(res) == {"westworld", "trajworld"} and set(res["westworld"]) == {"1", "2"}
    assert all(0 < v["mae"] < 1 for m in res.values() for v in m.values())
    assert (tmp_path / "sc" / "scalability.png").is_file()
    assert main(["eval", "scalability", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--ns", "5",
                 "--history", "4", "--horizon", "4", "--stride", "4", "--out", str(tmp_path / "x"), "--threads", "1"]) == 2
    assert "N = 5 asked for, but only 2 environments" in capsys.readouterr().err


def test_ablation_table_compares_full_dense_and_structureless(corpus, tmp_path, capsys):
    from ws_cli.main import main

    build_corpus(corpus, ["gym-walker2d"], episodes=2, episodes_per_shard=2, steps=30, behaviours=("pink",),
                 progress=False)
    assert main(["eval", "ablation", "--corpus", str(corpus), "--systems", ",".join(SYSTEMS), "--eval-systems",
                 "gym-walker2d", "--steps", "2", "--eval-every", "2", "--history", "4", "--horizon", "4", "--stride",
                 "4", "--batch-size", "4", "--d-model", "32", "--blocks", "1", "--experts", "2", "--expert-hidden",
                 "32", "--bins", "32", "--threads", "1", "--out", str(tmp_path / "ab")]) == 0
    out = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert set(out["results"]) == {"WestWorld", "w/o Sys-MoE", "w/o structure", "hold-last-state"}
    p = out["parameters"]
    assert p["w/o structure"] < p["WestWorld"] and 0.8 < p["w/o Sys-MoE"] / p["WestWorld"] < 1.2
    assert "| w/o Sys-MoE |" in capsys.readouterr().out


def test_trajectory_world_model_drives_mppi_with_its_history(small_datasets, tmp_path):
    """A WestWorld checkpoint trained on `ws collect` data runs as MPPI dynamics on Hopper."""
    from ws_mppi.config import ControllerConfig
    from ws_mppi.mppi import MPPIConfig
    from ws_mppi.runner import make_controller, run_episode
    from ws_sim.channels import ChannelMismatchError
    from ws_sim.envs import make_env

    train_ds, val_ds = small_datasets
    env = make_env("hopper", max_episode_steps=12)
    cfg = PretrainConfig(history=4, horizon=4, batch_size=4, steps=2, warmup=1, eval_every=2, stride=2)
    from ws_worldmodel.pretrain import windows_from_splits

    tr, va = windows_from_splits(train_ds, [val_ds], env.model, 8, 2)
    pretrain([tr], [va], TINY, cfg, tmp_path / "ww.pt", progress=False)
    ctrl = make_controller(env, str(tmp_path / "ww.pt"), ControllerConfig(MPPIConfig(horizon=4, samples=8)), seed=0)
    res = run_episode(env, ctrl, seed=1)
    dyn = ctrl.mppi.dynamics
    assert res.length >= 2 and np.isfinite(res.reward)
    assert len(dyn._states) == min(4, res.length) and ctrl.last.states.shape == (8, 4, 12)
    # the planned rollouts are in physical units: heights near the hopper's ~1.2 m
    assert 0.3 < float(ctrl.last.states[..., 1].mean()) < 2.5
    with pytest.raises(ChannelMismatchError, match="was not trained on 'walker2d'"):
        make_controller(make_env("walker2d"), str(tmp_path / "ww.pt"), ControllerConfig())


def test_the_expert_sample_on_a_sequence_model_reads_the_states_it_imagined(small_datasets, tmp_path):
    """The policy sample's closed loop through an autoregressive world model (TrajWorld): step t's history
    ends with the state predicted at step t - 1 and the action taken in it; the executed history is left as
    it was. An ONNX export of WestWorld at a longer horizon serves both the one-step imagination and shorter
    rollouts."""
    from ws_distill.export import export_onnx
    from ws_mppi.dynamics import SequenceDynamics
    from ws_mppi.mppi import MPPI, MPPIConfig
    from ws_sim.envs import make_env
    from ws_worldmodel.onnx_model import OnnxSequenceModel
    from ws_worldmodel.pretrain import windows_from_splits
    from ws_worldmodel.trajworld import TrajWorldConfig

    train_ds, val_ds = small_datasets
    env = make_env("hopper")
    tr, va = windows_from_splits(train_ds, [val_ds], env.model, 8, 2)
    cfg = PretrainConfig(history=4, horizon=4, batch_size=4, steps=2, warmup=1, eval_every=2, stride=2)
    pretrain([tr], [va], TrajWorldConfig(d_model=16, n_heads=2, n_blocks=1, bins=16), cfg, tmp_path / "tw.pt",
             progress=False)
    model = load_checkpoint(tmp_path / "tw.pt")
    assert not model.can_imagine
    dyn = SequenceDynamics(model, "hopper")
    s0, _ = env.reset(seed=0)
    for _ in range(2):  # two executed steps: the window is padded before them
        dyn.observe(s0, np.full(3, 0.1))
    calls = []
    real_predict = model.predict

    def recording(system, states, actions):
        out = real_predict(system, states, actions)
        calls.append((states[0].copy(), actions[0].copy(), out[0].copy()))
        return out

    model.predict = recording
    policy = lambda s: np.tanh(s[2:5])  # noqa: E731  (acts on the state it is given)
    mppi = MPPI(dyn, lambda s, a: torch.zeros(s.shape[0]), -np.ones(3), np.ones(3),
                MPPIConfig(horizon=4, samples=4, policy_samples=1), policy=policy)
    executed = [x.copy() for x in dyn._states]
    acts = mppi.policy_rollout(torch.as_tensor(s0, dtype=torch.float32))
    assert len(calls) == 3 and acts.shape == (4, 3)
    for t in range(1, 3):
        hist_s, hist_a, _ = calls[t]
        np.testing.assert_allclose(hist_s[-1], calls[t - 1][2][0])  # the state imagined one step before
        np.testing.assert_allclose(hist_s[-2], s0 if t == 1 else calls[t - 2][2][0])
        np.testing.assert_allclose(hist_a[3 - 1], acts[t - 1].numpy(), rtol=1e-6)  # the action taken there
        np.testing.assert_allclose(acts[t].numpy(), np.clip(policy(calls[t - 1][2][0]), -1, 1), rtol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(dyn._states, executed))

    pretrain([tr], [va], TINY, cfg, tmp_path / "ww.pt", progress=False)
    ww = load_checkpoint(tmp_path / "ww.pt")
    onnx_dyn = SequenceDynamics(OnnxSequenceModel(export_onnx(ww, "hopper", 4, tmp_path / "ww.onnx")), "hopper")
    a = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (5, 2, 3)), dtype=torch.float32)
    s = torch.as_tensor(s0, dtype=torch.float32)
    np.testing.assert_allclose(onnx_dyn.rollout(s, a).numpy(), SequenceDynamics(ww, "hopper").rollout(s, a).numpy(),
                               atol=1e-3)
    step = onnx_dyn.stepper(s)
    assert torch.isfinite(step(a[0, 0])).all() and torch.isfinite(step(a[0, 1])).all()


@pytest.mark.parametrize("executed", [0, 2, 6])
def test_westworlds_expert_sample_continues_its_one_pass_prediction(small_datasets, tmp_path, executed):
    """WestWorld's policy sample: each imagined step continues the one-pass prediction by one query step
    (``imagine``), so the closed loop predicts what ``rollout`` predicts for the actions it took (to float
    rounding), with no call of ``predict``, before and after the history window is full (4 steps); the
    executed history is left as it was. Bad shapes are refused."""
    from ws_mppi.dynamics import SequenceDynamics
    from ws_mppi.mppi import MPPI, MPPIConfig
    from ws_sim.envs import make_env
    from ws_worldmodel.pretrain import windows_from_splits

    train_ds, val_ds = small_datasets
    env = make_env("hopper")
    tr, va = windows_from_splits(train_ds, [val_ds], env.model, 8, 2)
    cfg = PretrainConfig(history=4, horizon=6, batch_size=4, steps=2, warmup=1, eval_every=2, stride=2)
    pretrain([tr], [va], WestWorldConfig(**{**TINY.__dict__, "target": "delta"}), cfg, tmp_path / "ww.pt",
             progress=False)
    model = load_checkpoint(tmp_path / "ww.pt")
    assert model.can_imagine
    dyn = SequenceDynamics(model, "hopper")
    s0, _ = env.reset(seed=0)
    rng = np.random.default_rng(executed)
    for _ in range(executed):
        dyn.observe(s0 + rng.normal(0, 0.05, s0.shape), rng.uniform(-1, 1, 3))
    executed_states = [x.copy() for x in dyn._states]
    real_predict, calls = model.predict, []
    model.predict = lambda *args: calls.append(args) or real_predict(*args)
    policy = lambda s: np.tanh(3 * s[2:5])  # noqa: E731  (acts on the state it is given)
    mppi = MPPI(dyn, lambda s, a: torch.zeros(s.shape[0]), -np.ones(3), np.ones(3),
                MPPIConfig(horizon=6, samples=4, policy_samples=1), policy=policy)
    s = torch.as_tensor(s0, dtype=torch.float32)
    acts = mppi.policy_rollout(s)
    assert calls == [] and acts.shape == (6, 3)
    model.predict = real_predict
    pred = dyn.rollout(s, acts[None]).numpy()[0]  # (6, nx): what the one pass predicts for those actions
    for t in range(1, 6):  # each action was the policy's in the state imagined before it
        np.testing.assert_allclose(acts[t].numpy(), np.clip(policy(pred[t - 1]), -1, 1), rtol=1e-4, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(dyn._states, executed_states))
    with pytest.raises(ValueError, match="imagine needs states"):
        model.imagine("hopper", np.zeros((3, 12)), np.zeros((2, 3)))


def test_zero_shot_normalises_by_the_observed_histories_not_the_targets(small_datasets):
    """The default zero-shot normalisation takes each state channel's range from the segments' observed
    histories only: over all histories every varying channel spans exactly [0, 1], while the targets may
    leave it; the seed's per-dataset normalisation puts every state, targets included, in [0, 1]."""
    from ws_sim.envs import make_env
    from ws_worldmodel.protocols import _eval_windows

    _, val = small_datasets
    mj = make_env("hopper").model
    hist_norm = _eval_windows(val, mj, 10, 10, history=4)
    hist = hist_norm.states[:, :4].reshape(-1, hist_norm.states.shape[2])
    varying = hist.max(0) - hist.min(0) > 1e-6
    assert varying.sum() >= 6
    np.testing.assert_allclose(hist.min(0)[varying], 0.0, atol=1e-6)
    np.testing.assert_allclose(hist.max(0)[varying], 1.0, atol=1e-6)
    whole = _eval_windows(val, mj, 10, 10, history=4, normalisation="dataset").states
    assert whole.min() >= -1e-6 and whole.max() <= 1 + 1e-6
    assert not np.allclose(whole, hist_norm.states)
    with pytest.raises(ValueError, match="normalisation must be one of"):
        _eval_windows(val, mj, 10, 10, history=4, normalisation="targets")
