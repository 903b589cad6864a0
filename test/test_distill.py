"""Distillation (eqs. 37-38), ONNX export with a dynamic batch, ONNX Runtime parity and MPPI on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ws_distill.distill import distill, kd_loss, student_config
from ws_distill.export import OnnxSequenceModel, export_onnx, parity
from ws_mppi.config import ConfigError, ControllerConfig
from ws_mppi.mppi import MPPIConfig
from ws_mppi.runner import make_controller
from ws_sim.envs import make_env
from ws_worldmodel.checkpoint import load_checkpoint
from ws_worldmodel.pretrain import PretrainConfig, pretrain, windows_from_splits
from ws_worldmodel.westworld import WestWorldConfig

TH, H = 3, 5


def test_kd_loss_is_the_teacher_student_kl():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 4, 8, generator=g)
    s = torch.randn(2, 3, 4, 8, generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert float(kd_loss(t, t, mask)) == pytest.approx(0.0, abs=1e-6)
    pt, ps = torch.softmax(t, -1), torch.softmax(s, -1)
    manual = (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert float(kd_loss(s, t, mask)) == pytest.approx(float(manual), rel=1e-5)
    # a teacher with twice the bins: its probabilities summed over neighbouring pairs
    t8 = torch.randn(2, 3, 4, 16, generator=g)
    merged = torch.softmax(t8, -1).unflatten(-1, (8, 2)).sum(-1)
    manual = (merged * (merged.log() - ps.log())).sum(-1).mean()
    assert float(kd_loss(s, t8, mask)) == pytest.approx(float(manual), rel=1e-5)
    with pytest.raises(ValueError, match="divide"):
        kd_loss(torch.randn(2, 3, 4, 5), t8, mask)
    mask[:, 3] = False  # a padding channel never counts
    s2 = s.clone()
    s2[:, :, 3] += 100.0
    assert float(kd_loss(s2, t, mask)) == pytest.approx(float(kd_loss(s, t, mask)), rel=1e-6)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, small_datasets):
    train, val = small_datasets
    tw, vw = windows_from_splits(train, [val], make_env("hopper").model, TH + H, 2)
    cfg = WestWorldConfig(d_model=16, n_heads=2, n_blocks=3, expert_hidden=16, bins=16, d_state=4, expand=1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    pretrain([tw], [vw], cfg, PretrainConfig(history=TH, horizon=H, steps=40, eval_every=40, batch_size=8, stride=2,
                                             warmup=1, lr=3e-3), path, progress=False)
    return load_checkpoint(path), tw, vw


def test_distilled_student_moves_toward_the_teacher(tmp_path, teacher):
    model, tw, vw = teacher
    scfg = student_config(model.net.cfg, n_blocks=1)
    assert scfg.n_blocks == 1 and scfg.bins == model.net.cfg.bins
    cfg = PretrainConfig(history=TH, horizon=H, steps=30, eval_every=30, batch_size=8, stride=2, warmup=1, lr=3e-3)
    distill(model, [tw], [vw], scfg, cfg, tmp_path / "student.pt", alpha=0.5, progress=False)
    student = load_checkpoint(tmp_path / "student.pt")
    assert len(student.net.blocks) == 1 and student.systems.keys() == model.systems.keys()
    from ws_worldmodel.data import collate

    batch = collate([(tw, i) for i in range(min(16, len(tw)))], TH)
    fresh = type(student.net)(scfg).eval()
    with torch.no_grad():
        t_logits = model.net(batch)[0]
        before = float(kd_loss(fresh(batch)[0], t_logits, batch.state_mask))
        after = float(kd_loss(student.net(batch)[0], t_logits, batch.state_mask))
    assert after < before
    with pytest.raises(ValueError, match="bins"):
        distill(model, [tw], [vw], dataclasses.replace(scfg, bins=8), cfg, None, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        distill(model, [tw], [vw], scfg, cfg, None, alpha=1.5, progress=False)


def test_a_step_token_student_distils_and_exports_with_either_scan(tmp_path, teacher, hopper_env):
    """A student with one token per step (``tokens="step"``) and half the teacher's bins: distillation moves it
    toward the teacher, and its ONNX export, with the scan unrolled, vectorised or log-depth, agrees with PyTorch
    (1e-3, physical units) and plans in MPPI; an unknown scan, and bins that do not divide the teacher's, are
    refused."""
    model, tw, vw = teacher
    scfg = student_config(model.net.cfg, n_blocks=2, tokens="step", bins=model.net.cfg.bins // 2)
    assert scfg.tokens == "step" and scfg.bins * 2 == model.net.cfg.bins
    assert scfg.hl_gauss_sigma * 2 == pytest.approx(model.net.cfg.hl_gauss_sigma)
    with pytest.raises(ValueError, match="divide"):
        student_config(model.net.cfg, bins=model.net.cfg.bins - 1)
    cfg = PretrainConfig(history=TH, horizon=H, steps=30, eval_every=30, batch_size=8, stride=2, warmup=1, lr=3e-3)
    distill(model, [tw], [vw], scfg, cfg, tmp_path / "student.pt", alpha=0.5, progress=False)
    student = load_checkpoint(tmp_path / "student.pt")
    assert student.net.cfg.tokens == "step"
    from ws_worldmodel.data import collate

    batch = collate([(tw, i) for i in range(min(16, len(tw)))], TH)
    with torch.no_grad():
        t_logits = model.net(batch)[0]
        before = float(kd_loss(type(student.net)(scfg).eval()(batch)[0], t_logits, batch.state_mask))
        after = float(kd_loss(student.net(batch)[0], t_logits, batch.state_mask))
    assert after < before
    outs = {}
    for scan in ("unrolled", "vectorised", "parallel"):
        ort_model = OnnxSequenceModel(export_onnx(student, "hopper", H, tmp_path / f"{scan}.onnx", scan=scan))
        assert parity(student, ort_model, batch_sizes=(1, 64))["max_abs_diff"] < 1e-3
        outs[scan] = ort_model
    rng = np.random.default_rng(1)
    s = np.repeat(rng.uniform(0, 0.5, size=(1, TH, 12)), 8, axis=0)
    a = rng.uniform(-1, 1, size=(8, TH + H, 3))
    a[:, :TH - 1] = a[:1, :TH - 1]
    for scan in ("vectorised", "parallel"):
        np.testing.assert_allclose(outs[scan].predict("hopper", s, a), outs["unrolled"].predict("hopper", s, a),
                                   rtol=1e-4, atol=1e-4)
    ctrl = make_controller(hopper_env, str(tmp_path / "parallel.onnx"),
                           ControllerConfig(mppi=MPPIConfig(horizon=H, samples=16, temperature=0.1, noise_sigma=0.5)),
                           seed=0)
    assert np.all(np.isfinite(ctrl.plan(hopper_env.reset(seed=0)[0], 0)))
    # the change-from-the-last-state encoding exports too (its decode's expm1 written as exp - 1)
    from ws_worldmodel.pretrain import TrajectoryWorldModel
    from ws_worldmodel.westworld import WestWorld

    torch.manual_seed(0)
    delta = TrajectoryWorldModel(WestWorld(dataclasses.replace(scfg, target="delta")).eval(), student.systems, TH, H)
    with torch.no_grad():
        delta.net.head.weight.normal_()  # away from "no change", so that the decode is exercised
    d_onnx = OnnxSequenceModel(export_onnx(delta, "hopper", H, tmp_path / "delta.onnx"))
    assert parity(delta, d_onnx, batch_sizes=(1, 16))["max_abs_diff"] < 1e-3
    with pytest.raises(ValueError, match="scan"):
        export_onnx(student, "hopper", H, tmp_path / "x.onnx", scan="chunked")
    assert not (tmp_path / "x.onnx").exists()


def test_onnx_export_parity_dynamic_batch_and_mppi(tmp_path, teacher, hopper_env):
    model, _, _ = teacher
    path = export_onnx(model, "hopper", H, tmp_path / "m.onnx")
    ort_model = OnnxSequenceModel(path)
    assert (ort_model.history, ort_model.horizon, ort_model.system) == (TH, H, "hopper")
    assert ort_model.shared_history  # the default: one history for the batch, run once (MPPI)
    res = parity(model, ort_model, batch_sizes=(1, 7, 64))
    assert res["max_abs_diff"] < 1e-3, res  # physical units (Hopper states span ~0.1-10)
    rng = np.random.default_rng(0)
    s, a = rng.uniform(0, 0.5, size=(4, TH, 12)), rng.uniform(-1, 1, size=(4, TH + H, 3))
    with pytest.raises(ValueError, match="histories differ"):
        ort_model.predict("hopper", s, a)
    per_sample = OnnxSequenceModel(export_onnx(model, "hopper", H, tmp_path / "ps.onnx", shared_history=False))
    assert not per_sample.shared_history
    assert np.abs(per_sample.predict("hopper", s, a) - model.predict("hopper", s, a)).max() < 1e-3
    # the PyTorch model runs one shared history once, with the predictions of one sample at a time
    s[:], a[:, :TH - 1] = s[:1], a[:1, :TH - 1]
    one_by_one = np.concatenate([model.predict("hopper", s[i:i + 1], a[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(model.predict("hopper", s, a), one_by_one, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ort_model.predict("hopper", s, a), one_by_one, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="exported for"):
        ort_model.predict("hopper", np.zeros((2, TH, 12)), np.zeros((2, TH + H + 1, 3)))
    cfg = ControllerConfig(mppi=MPPIConfig(horizon=H, samples=16, temperature=0.1, noise_sigma=0.5))
    ctrl = make_controller(hopper_env, str(path), cfg, seed=0)
    state, _ = hopper_env.reset(seed=0)
    action = ctrl.plan(state, 0)
    assert action.shape == (3,) and np.all(np.isfinite(action))
    with pytest.raises(ConfigError, match="re-export"):
        make_controller(hopper_env, str(path), dataclasses.replace(cfg, mppi=MPPIConfig(horizon=H + 1, samples=16)))
    with pytest.raises(ValueError, match="WestWorld"):
        from ws_worldmodel.pretrain import TrajectoryWorldModel
        from ws_worldmodel.trajworld import TrajWorld, TrajWorldConfig

        tw = TrajectoryWorldModel(TrajWorld(TrajWorldConfig(d_model=16, n_heads=2, n_blocks=1, bins=16)),
                                  model.systems, TH, H)
        export_onnx(tw, "hopper", H, tmp_path / "tw.onnx")
    assert not (tmp_path / "tw.onnx").exists()


def test_an_export_with_a_fixed_batch_has_fewer_operators_and_serves_any_batch(tmp_path, teacher, hopper_env):
    """``ws export --batch K``: the graph takes exactly K samples (its shape arithmetic folded into constants:
    fewer nodes once ONNX Runtime has optimised it), predicts what the dynamic export predicts, and still
    serves a smaller batch (padded) and a larger one (in pieces of K), also with a history per sample; MPPI
    runs it at its K. A batch below 1 is refused."""
    import onnx
    import onnxruntime as ort

    model, _, _ = teacher
    k = 16
    dyn = OnnxSequenceModel(export_onnx(model, "hopper", H, tmp_path / "dyn.onnx"))
    fixed_path = export_onnx(model, "hopper", H, tmp_path / "fixed.onnx", batch=k)
    fixed = OnnxSequenceModel(fixed_path)
    assert (dyn.batch, fixed.batch) == (None, k)
    assert [d.dim_value for d in onnx.load(str(fixed_path)).graph.input[1].type.tensor_type.shape.dim][0] == k
    nodes = {}
    for name in ("dyn", "fixed"):
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"{name}_opt.onnx")
        ort.InferenceSession(str(tmp_path / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
        nodes[name] = len(onnx.load(str(tmp_path / f"{name}_opt.onnx")).graph.node)
    assert nodes["fixed"] < nodes["dyn"], nodes
    rng = np.random.default_rng(1)
    for b in (k, 3, 2 * k + 5):
        s = np.repeat(rng.uniform(0, 0.5, size=(1, TH, 12)), b, axis=0)
        a = rng.uniform(-1, 1, size=(b, TH + H, 3))
        a[:, :TH - 1] = a[:1, :TH - 1]
        np.testing.assert_allclose(fixed.predict("hopper", s, a), dyn.predict("hopper", s, a), rtol=1e-4, atol=1e-4)
    per_sample = OnnxSequenceModel(export_onnx(model, "hopper", H, tmp_path / "ps.onnx", shared_history=False, batch=k))
    s, a = rng.uniform(0, 0.5, size=(k + 3, TH, 12)), rng.uniform(-1, 1, size=(k + 3, TH + H, 3))
    np.testing.assert_allclose(per_sample.predict("hopper", s, a), model.predict("hopper", s, a), rtol=1e-3, atol=1e-3)
    ctrl = make_controller(hopper_env, str(fixed_path), ControllerConfig(
        mppi=MPPIConfig(horizon=H, samples=k, temperature=0.1, noise_sigma=0.5)), seed=0)
    calls = []
    run = ctrl.mppi.dynamics.model.session.run
    ctrl.mppi.dynamics.model.session.run = lambda *x: calls.append(x[1]["actions"].shape) or run(*x)
    state, _ = hopper_env.reset(seed=0)
    assert np.all(np.isfinite(ctrl.plan(state, 0)))
    assert calls and all(c[0] == k for c in calls)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        export_onnx(model, "hopper", H, tmp_path / "zero.onnx", batch=0)


def test_ws_export_cli_writes_a_checked_onnx_and_reports_parity(tmp_path, capsys):
    """`ws export` on the shipped Hopper WestWorld: the file, its metadata and the parity line."""
    import json
    from pathlib import Path

    import ws_worldmodel
    from ws_cli.main import main

    ckpt = Path(ws_worldmodel.__file__).parent / "checkpoints" / "hopper_westworld.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--horizon", "5", "--out", str(tmp_path / "h.onnx")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["system"] == "hopper" and out["horizon"] == 5 and out["parity_max_abs_diff"] < 1e-3
    assert OnnxSequenceModel(tmp_path / "h.onnx").horizon == 5
    assert main(["export", "--checkpoint", str(ckpt), "--system", "walker2d", "--out", str(tmp_path / "w.onnx")]) == 2
