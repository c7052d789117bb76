"""The `piad` command line: documented flags, train + evaluate end to end, clear refusals."""

import json

import pytest
from helpers import roc_auc_from_scores, run_cli

from piad.cli import build_parser, main

COMMANDS = ["train", "evaluate", "score", "feature-stats", "data"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_documents_its_flags(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help text"


def test_train_then_evaluate_prints_roc_auc(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--benchmark",
                "synthetic",
                "--iterations",
                "4",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "checkpoint_every=2",
                "log_every=2",
            ]
        )
        == 0
    )
    assert main(["evaluate", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "random" in text  # the random VGG is labelled
    m = json.loads((out / "metrics.json").read_text())
    assert m["roc_auc"] == pytest.approx(roc_auc_from_scores(out), abs=1e-6)
    assert f"ROC AUC = {m['roc_auc']:.4f}  (synthetic, normal class 0" in text
    assert m["distance"] == "relative_perceptual_l1"


def test_config_errors_exit_2_with_the_key_named(tmp_path, capsys):
    assert main(["train", "--benchmark", "synthetic", "--out", str(tmp_path / "r"), "--set", "iterations=-1"]) == 2
    assert "'iterations'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any work started


def test_threads_flag_sets_torch_threads_and_refuses_zero(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["evaluate", "--out", str(tmp_path / "none"), "--threads", "0"]) == 2
        assert "--threads 0" in capsys.readouterr().err and torch.get_num_threads() == before
        assert main(["evaluate", "--out", str(tmp_path / "none"), "--threads", "1"]) == 2  # no run there
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_console_entry_point_runs():
    r = run_cli("--help")
    assert r.returncode == 0 and "train" in r.stdout
