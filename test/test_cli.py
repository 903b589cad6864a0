"""The ws command line end to end: collect -> train -> mppi run, --help, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ws_cli.main import build_parser, main


def _subcommands():
    return [["collect"], ["train"], ["mppi"], ["mppi", "run"], ["mppi", "estimate"], ["mppi", "randomised"], ["corpus"], ["corpus", "build"], ["pretrain"],
            ["eval"], ["eval", "zero-shot"], ["eval", "few-shot"], ["eval", "routing"], ["eval", "control"], ["eval", "open-loop"], ["eval", "curves"],
            ["launch"], ["video"], ["video", "clips"], ["video", "experts"], ["video", "experts", "train"],
            ["video", "revisit"], ["video", "revisit", "train"], ["video", "distill"]]


@pytest.mark.parametrize("argv", _subcommands())
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert "usage: ws" in capsys.readouterr().out


def test_seed_is_accepted_where_randomness_enters():
    p = build_parser()
    for argv in (["collect", "--out", "x"], ["train", "--train", "a", "--val", "b", "--out", "c"], ["mppi", "run"],
                 ["corpus", "build", "--out", "x"], ["pretrain", "--corpus", "c", "--out", "o"],
                 ["eval", "few-shot", "--corpus", "c", "--checkpoint", "k", "--out", "o"]):
        assert p.parse_args(argv + ["--seed", "3"]).seed == 3


def test_collect_train_run_pipeline(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["collect", "--env", "hopper", "--out", str(data), "--train-episodes", "1", "--full-episodes", "0",
                 "--val-episodes", "1", "--max-steps", "25", "--horizon", "8", "--samples", "20",
                 "--format", "minari", "--seed", "1"]) == 0
    assert (data / "train").is_dir() and (data / "val").is_dir()
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--env", "hopper", "--train", str(data / "train"), "--val", str(data / "val"),
                 "--out", str(ckpt), "--ensemble-size", "2", "--elites", "1", "--hidden", "32", "--layers", "2",
                 "--epochs", "3", "--steps-per-epoch", "10", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line["checkpoint"] == str(ckpt) and ckpt.is_file()
    run = tmp_path / "run"
    assert main(["mppi", "run", "--env", "hopper", "--dynamics", str(ckpt), "--compare", "zero", "--episodes", "1",
                 "--max-steps", "12", "--horizon", "6", "--samples", "16", "--out", str(run), "--seed", "2"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert list(report["controllers"]) == ["learned:m.pt", "zero"]
    rec = np.load(run / "states_learned_m.pt_seed2.npz")
    assert rec["states"].shape == (len(rec["actions"]) + 1, 12)
    assert (run / "report.png").stat().st_size > 10_000
    mp4 = report["video"]
    assert mp4.endswith(".mp4") and (run / mp4.split("/")[-1]).stat().st_size > 1_000


def test_main_job_default_prints_learned_oracle_and_zero(tmp_path):
    """README command (1) in small: the shipped checkpoint against oracle and zero action."""
    proc = subprocess.run([sys.executable, "-m", "ws_cli.main", "mppi", "run", "--max-steps", "40", "--no-video",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for name in ("learned (hopper_mlp_ensemble.pt)", "oracle", "zero"):
        assert name in proc.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["controllers"]) == {"learned (hopper_mlp_ensemble.pt)", "oracle", "zero"}


@pytest.mark.parametrize("argv,message", [
    (["mppi", "run", "--env", "cheetah"], "unknown environment 'cheetah'"),
    (["mppi", "run", "--dynamics", "/nonexistent/model.pt"], "checkpoint /nonexistent/model.pt does not exist"),
    (["mppi", "run", "--env", "piper"], "no default checkpoint ships for 'piper'"),
    (["collect", "--env", "hopper", "--randomise", "--out", "/tmp/never"], "--env hopper has none"),
    (["train", "--train", "/nonexistent/t.hdf5", "--val", "/nonexistent/v.hdf5", "--out", "/tmp/x.pt"],
     "dataset /nonexistent/t.hdf5 does not exist"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x"], "nothing to evaluate"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--pretrained", "westworld"],
     "--pretrained entries are KIND=PATH"),
    (["eval", "control", "--train", "/nonexistent/t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--extra", "z=zero"],
     "dataset /nonexistent/t.hdf5 does not exist"),
    (["eval", "open-loop", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--checkpoints", "a.pt"],
     "--checkpoints entries are LABEL=PATH"),
    (["eval", "open-loop", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--checkpoints", "a=a.pt",
      "--horizon", "0"], "--horizon must be >= 1, got 0"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--extra", "z=zero",
      "--time-budget-min", "0"], "--time-budget-min must be > 0 minutes, got 0.0"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--extra", "z=zero",
      "--action-effect-weight", "-1"], "--action-effect-weight must be a finite number >= 0, got -1.0"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--extra", "z=zero",
      "--action-effect-weight", "1", "--action-effect-noise", "0"], "--action-effect-noise must be a positive number"),
    (["eval", "control", "--train", "t.hdf5", "--val", "v.hdf5", "--out", "/tmp/x", "--extra", "z=zero",
      "--action-effect-weight", "1"], "--action-effect-weight trains WestWorld: give --pretrained westworld=PATH"),
])
def test_bad_input_gives_one_clear_line(argv, message, capsys):
    assert main(argv + ["--no-video"] if argv[0] == "mppi" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_and_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert main(["mppi", "run", "--dynamics", str(bad), "--no-video", "--out", str(tmp_path / "r")]) == 2
    assert "bad.pt is corrupt" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mppi:\n  horizn: 3\n")
    assert main(["mppi", "run", "--config", str(cfg), "--no-video", "--out", str(tmp_path / "r")]) == 2
    assert "unknown MPPI config keys ['horizn']" in capsys.readouterr().err


def test_dataset_of_wrong_environment_is_refused_by_train(tmp_path, small_datasets, capsys):
    from ws_sim.dataset import write_dataset

    train, val = small_datasets
    write_dataset(train, tmp_path / "t.hdf5")
    write_dataset(val, tmp_path / "v.hdf5")
    assert main(["train", "--env", "walker2d", "--train", str(tmp_path / "t.hdf5"), "--val", str(tmp_path / "v.hdf5"),
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "has 12 channels but the environment has 18" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


# every trainer takes --device; (argv without --device, the library default the flag maps to)
TRAINERS = [
    (["train", "--train", "a", "--val", "b", "--out", "c"], "cpu"),
    (["pretrain", "--corpus", "c", "--out", "o"], "auto"),
    (["distill", "--teacher", "t", "--corpus", "c", "--out", "o"], "auto"),
    (["eval", "few-shot", "--corpus", "c", "--checkpoint", "k", "--out", "o"], "auto"),
    (["eval", "scalability", "--corpus", "c", "--out", "o"], "auto"),
    (["eval", "ablation", "--corpus", "c", "--out", "o"], "auto"),
    (["policy", "train", "--demos", "d", "--out", "o"], "cpu"),
    (["hitl", "retrain", "--init", "p", "--aggregate", "a", "--out", "o"], "cpu"),
    (["hitl", "dagger", "--init", "p", "--demos", "d"], "cpu"),
    (["video", "experts", "train", "--clips", "c", "--out", "o"], "cpu"),
    (["video", "revisit", "train", "--out", "o"], "cpu"),
    (["video", "distill", "--clips", "c", "--teacher", "t", "--student", "s", "--out", "o"], "cpu"),
    (["eval", "control", "--train", "a", "--val", "b", "--out", "o"], "cpu"),
    (["expert", "train", "--out", "o"], "cpu"),
]


@pytest.mark.parametrize("argv,default", TRAINERS, ids=[" ".join(a[:2]) for a, _ in TRAINERS])
def test_every_trainer_takes_device(argv, default):
    p = build_parser()
    assert p.parse_args(argv).device == default
    assert p.parse_args(argv + ["--device", "cpu"]).device == "cpu"
    assert p.parse_args(argv + ["--device", "cuda"]).device == "cuda"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [
    ["train", "--train", "/nonexistent/t.hdf5", "--val", "/nonexistent/v.hdf5", "--out", "/tmp/x.pt"],
    ["policy", "train", "--demos", "/nonexistent/d.hdf5", "--out", "/tmp/x.pt"],
    ["video", "experts", "train", "--clips", "/nonexistent/c.hdf5", "--out", "/tmp/x.pt"],
])
def test_device_cuda_without_cuda_is_one_clear_line_before_any_work(argv, capsys):
    """--device cuda on a machine without CUDA: refused before the data is even read (the
    dataset does not exist, and that is not what the error says)."""
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and "no CUDA GPU" in err and "Traceback" not in err


def test_device_cpu_trains(tmp_path, small_datasets, capsys):
    """--device cpu is accepted and trains (the MLPEnsemble, tiny)."""
    from ws_sim.dataset import write_dataset

    train, val = small_datasets
    write_dataset(train, tmp_path / "t.hdf5")
    write_dataset(val, tmp_path / "v.hdf5")
    assert main(["train", "--train", str(tmp_path / "t.hdf5"), "--val", str(tmp_path / "v.hdf5"), "--out",
                 str(tmp_path / "m.pt"), "--ensemble-size", "2", "--elites", "1", "--hidden", "16", "--layers", "2",
                 "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"] == str(tmp_path / "m.pt")


def test_train_resume_extends_a_run_and_needs_its_state(tmp_path, small_datasets, capsys):
    """'ws train --resume' continues from OUT.state (here to more epochs), and without that file
    says which file is missing."""
    from ws_sim.dataset import write_dataset

    train, val = small_datasets
    write_dataset(train, tmp_path / "t.hdf5")
    write_dataset(val, tmp_path / "v.hdf5")
    argv = ["train", "--train", str(tmp_path / "t.hdf5"), "--val", str(tmp_path / "v.hdf5"), "--ensemble-size", "2",
            "--elites", "1", "--hidden", "16", "--layers", "1", "--steps-per-epoch", "2", "--patience", "10"]
    with pytest.raises(SystemExit, match="no training state"):
        main(argv + ["--out", str(tmp_path / "other.pt"), "--epochs", "2", "--resume"])
    assert main(argv + ["--out", str(tmp_path / "m.pt"), "--epochs", "1"]) == 0
    # a budget of 0 minutes is one more epoch, then the best model so far
    assert main(argv + ["--out", str(tmp_path / "m.pt"), "--epochs", "3", "--resume", "--time-budget-min", "0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epochs"] == 2 and out["stopped"] == "time budget"
    assert main(argv + ["--out", str(tmp_path / "m.pt"), "--epochs", "3", "--resume"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epochs"] == 3 and out["stopped"] == "epochs" and out["state"] == str(tmp_path / "m.pt.state")
    with pytest.raises(SystemExit, match="time-budget-min"):
        main(argv + ["--out", str(tmp_path / "m.pt"), "--epochs", "4", "--resume", "--time-budget-min", "-1"])
    # several training files are joined, and --init fine-tunes the model just trained
    two = ["--train", str(tmp_path / "t.hdf5"), str(tmp_path / "v.hdf5")]
    assert main(argv + two + ["--out", str(tmp_path / "f.pt"), "--epochs", "1", "--init", str(tmp_path / "m.pt")]) == 0
    from ws_worldmodel.checkpoint import load_checkpoint

    tuned, payload = load_checkpoint(tmp_path / "f.pt", with_payload=True)
    assert payload["info"]["init"] == str(tmp_path / "m.pt") and len(payload["info"]["train"]) == 2
    assert payload["info"]["train_transitions"] == len(train) + len(val)
    # 'ws eval one-step' prints each checkpoint's error on each dataset, as training computed it
    capsys.readouterr()
    assert main(["eval", "one-step", "--checkpoint", str(tmp_path / "m.pt"), str(tmp_path / "f.pt"),
                 "--data", str(tmp_path / "v.hdf5")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["checkpoint"] for r in rows] == [str(tmp_path / "m.pt"), str(tmp_path / "f.pt")]
    assert rows[1]["model_mse"] == round(payload["info"]["val_one_step"]["model_mse"], 5)
    assert rows[0]["unchanged_state_mse"] == rows[1]["unchanged_state_mse"] > rows[0]["model_mse"]


def test_video_tools_are_ws_commands_with_the_modules_parsers(capsys):
    """'ws video <tool>' parses with the module's own arguments, as 'python -m ws_worldmodel.video.<tool>'."""
    args = build_parser().parse_args(["video", "experts", "train", "--clips", "c.hdf5", "--out", "m.pt",
                                      "--arch", "dense", "--steps", "3"])
    assert (args.video_command, args.cmd, args.arch, args.steps, args.max_chunk) == ("experts", "train", "dense", 3, 4)
    args = build_parser().parse_args(["video", "clips", "--out", "c.hdf5", "--kind", "joints"])
    assert (args.kind, args.episodes, args.size) == (["joints"], 40, 32)
    assert main(["video", "distill", "--clips", "/nonexistent/c.hdf5", "--teacher", "t.pt", "--student", "s.pt",
                 "--out", "o.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ws: error: ") and "Traceback" not in err
