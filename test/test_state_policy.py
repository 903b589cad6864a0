"""The privileged state-based policy (ws_policy/state_policy.py): it learns the demonstrated chunks from the
joints and object poses, round-trips through the policy checkpoint, runs through PolicyRunner, the evaluation and
the DAgger teacher, and refuses what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ws_policy.data import collect_demos, write_demos
from ws_policy.model import PolicyInputError
from ws_policy.state_policy import StatePolicy, StatePolicyConfig, state_features, train_state_policy
from ws_policy.train import Normalizer, PolicyCheckpointError, PolicyRunner, load_policy, save_policy


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    eps, attrs = collect_demos("pick_place", 3, seed=0, size=32)
    return eps, write_demos(eps, attrs, tmp_path_factory.mktemp("state") / "demos.hdf5")


def _obs(e, t):
    return {"qpos": e.qpos[t], "objects": e.objects[t]}


def test_x_prediction_learns_the_demonstrated_chunks_where_velocity_does_not_yet(demos):
    """At the same 1500 steps, the clean-chunk output (x-prediction) follows the demonstrations' next joint targets
    to under half the error of holding still, and better than the velocity output (docs/policy.md measures the same
    ordering closed loop over the whole band)."""
    eps, _ = demos
    err = {}
    for prediction in ("sample", "velocity"):
        torch.manual_seed(0)
        model, hist = train_state_policy(StatePolicyConfig(chunk=4, hidden=128, layers=2, action_prediction=prediction),
                                         eps, steps=1500, batch_size=128)
        assert np.mean(hist["loss"][-50:]) < 0.5 * np.mean(hist["loss"][:50])
        run = PolicyRunner(model, seed=0)
        e_, hold = [], []
        for e in (e for e in eps if e.success):
            for t in range(0, len(e.actions) - 4, 7):
                chunk = run(_obs(e, t))
                assert chunk.shape == (4, 7) and np.all(np.isfinite(chunk))
                e_.append(np.abs(chunk[:, :6] - e.actions[t:t + 4, :6]).mean())
                hold.append(np.abs(e.qpos[t][:6] - e.actions[t:t + 4, :6]).mean())
        err[prediction] = np.mean(e_)
    assert err["sample"] < 0.5 * np.mean(hold), (err, np.mean(hold))
    assert err["sample"] < err["velocity"], err


def test_sampling_lands_on_the_clean_estimate_and_the_checkpoint_round_trips(demos, tmp_path):
    eps, _ = demos
    model, _ = train_state_policy(StatePolicyConfig(chunk=4, hidden=32, layers=1), eps, steps=5, batch_size=8)
    feats = torch.as_tensor(state_features(model.normalizer.state(eps[0].qpos[:1]), eps[0].objects[:1]))
    with torch.no_grad():  # x-prediction: the last Euler step returns the network's clean estimate at that step
        model.net[-1].weight.zero_()
        model.net[-1].bias.copy_(torch.linspace(-0.5, 0.5, 28))
    for seed in (0, 1):
        got = model.sample(feats, torch.Generator().manual_seed(seed), steps=4)
        torch.testing.assert_close(got[0], torch.linspace(-0.5, 0.5, 28).view(4, 7), atol=1e-5, rtol=0)
    path = save_policy(model, tmp_path / "state.pt", {"kind": "state"})
    back, payload = load_policy(path)
    assert isinstance(back, StatePolicy) and payload["kind"] == "state" and back.cfg == model.cfg
    a, b = PolicyRunner(model, seed=3), PolicyRunner(back, seed=3)
    np.testing.assert_array_equal(a(_obs(eps[0], 5)), b(_obs(eps[0], 5)))
    payload["config"]["hidden"] = 64  # weights of another size: refused by name, nothing half-loaded
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(PolicyCheckpointError, match="state policy"):
        load_policy(tmp_path / "bad.pt")


def test_malformed_input_is_refused_by_name(demos):
    eps, _ = demos
    run = PolicyRunner(StatePolicy(StatePolicyConfig(chunk=4, hidden=16, layers=1)))
    with pytest.raises(PolicyInputError, match="objects"):
        run({"qpos": eps[0].qpos[0]})
    with pytest.raises(PolicyInputError, match="finite"):
        run({"qpos": eps[0].qpos[0], "objects": np.full(17, np.nan)})
    with pytest.raises(ValueError, match="action_prediction"):
        StatePolicyConfig(action_prediction="epsilon")
    with pytest.raises(ValueError, match="17"):
        state_features(np.zeros(8), np.zeros(3))
    from ws_policy.errors import PolicyError

    import dataclasses

    failed = [dataclasses.replace(e, success=False) for e in eps]
    with pytest.raises(PolicyError, match="no episodes"):
        train_state_policy(StatePolicyConfig(), failed, steps=1)


def test_ws_policy_train_state_then_eval_and_teach(demos, tmp_path, capsys):
    """The CLI trains it, evaluates it closed loop, and it is accepted as the DAgger teacher (its label is the first
    action of its chunk); flags that do not apply to it are refused."""
    from ws_cli.main import main
    from ws_policy.hitl import PrivilegedTeacher

    eps, path = demos
    out = tmp_path / "state.pt"
    assert main(["policy", "train", "--model", "state", "--demos", str(path), "--steps", "20", "--chunk", "4",
                 "--out", str(out), "--threads", "1"]) == 0
    assert "never for a robot" in capsys.readouterr().out
    assert main(["policy", "eval", "--checkpoint", str(out), "--episodes", "1", "--seed", "7", "--no-video",
                 "--out", str(tmp_path / "ev"), "--threads", "1"]) == 0
    import json

    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["episodes"] == 1 and report["policy"] and "p50_ms" in report["latency"]
    capsys.readouterr()
    model, _ = load_policy(out)
    label = PrivilegedTeacher(model).label(_obs(eps[0], 0))
    assert label.shape == (7,) and np.all(np.isfinite(label))
    assert main(["policy", "train", "--model", "state", "--demos", str(path), "--steps", "20", "--eval-every", "10",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "--eval-every" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
