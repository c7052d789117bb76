"""The runner: profiles, the job grid, skipping finished runs, provenance, and the CLI wiring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from piad.cli import build_parser
from piad.experiments import profiles, reproduce
from piad.experiments.grid import (
    NOTEBOOK,
    ensemble_groups,
    expected_iterations,
    is_finished,
    plan,
    resolve_ensemble_size,
)
from piad.experiments.jobs import run_job
from piad.experiments.notebooks import job_config, notebook_parameters
from piad.paths import assets_dir, repo_root
from piad.run.config import ABLATIONS


def test_job_configs_carry_the_profile_and_the_job():
    """The config a job trains with (job_config of its notebook parameters, as train_evaluate.ipynb builds it) has
    the job's benchmark, class, run and budget, the profile's perceptual settings and overrides, and for an ablation
    the variant's distance and weights."""
    main = {"distance": "relative_perceptual_l1", "weight_policy": "gradient_normalizing"}
    for name in profiles.PROFILES:
        prof = profiles.get_profile(name)
        grid = plan(prof)
        assert grid
        for exp in prof.experiments():
            job = max((j for j in grid if j.experiment.name == exp.name), key=lambda j: (j.normal_class, j.run))
            params = notebook_parameters(prof, job, Path("/tmp/x"), "cpu", None, 1)
            assert params["channels_last"] is (exp.benchmark in prof.channels_last)
            assert params["bf16"] is (exp.benchmark in prof.bf16)
            cfg = job_config(params)
            assert (cfg.benchmark, cfg.normal_class, cfg.run) == (exp.benchmark, job.normal_class, job.run)
            assert cfg.iterations == expected_iterations(prof, exp, None)
            assert cfg.data_root == prof.data_roots.get(exp.benchmark)
            assert (cfg.vgg_weights, cfg.layer) == (prof.params["vgg_weights"], prof.params["layer"])
            assert (cfg.feature_stats or "none") == prof.feature_stats_for(exp.benchmark)  # "none" stored as None
            assert json.loads(json.dumps({k: getattr(cfg, k) for k in prof.overrides})) == prof.overrides
            want = ABLATIONS[exp.ablation] if exp.ablation else main
            assert {k: getattr(cfg, k) for k in want} == want, exp.name
        cfg = job_config(notebook_parameters(prof, grid[-1], Path("/tmp/x"), "cpu", 7, 1))
        assert cfg.iterations == 7
    # the offline profile trains the CIFAR-10-size networks (main grid and ablation) in channels_last, nothing else
    offline = profiles.get_profile("offline")
    layouts = {
        j.experiment.name: notebook_parameters(offline, j, Path("/tmp/x"), "cpu", None, 1)["channels_last"]
        for j in plan(offline)
    }
    assert {name for name, cl in layouts.items() if cl} == {
        e.name for e in offline.experiments() if e.benchmark == "cifar10"
    }


def test_paper_profile_is_the_paper_setting():
    prof = profiles.get_profile("paper")
    assert prof.params == {"vgg_weights": "imagenet", "layer": "relu4_2", "feature_stats": "imagenet"}
    assert prof.runs == [0, 1, 2] and prof.iterations is None and not prof.overrides
    names = {e.name for e in prof.experiments()}
    assert {"mnist", "fashion_mnist", "cifar10", "coil100", "celeba", "lsun"} <= names
    assert {f"cifar10-ablation-{v}" for v in profiles.ABLATION_VARIANTS} <= names
    assert profiles.get_profile("paper").ablation_rows()["relative_perceptual_l1"] == "cifar10"


def test_offline_profile_uses_substitutes_from_assets(monkeypatch, tmp_path):
    monkeypatch.setenv("PIAD_ASSETS", str(tmp_path))
    prof = profiles.get_profile("offline")
    assert prof.params["vgg_weights"] == str(tmp_path / "vgg19_caffe_normalised_to_relu3_1.pth")
    assert prof.params["layer"] == "relu3_1"
    cifar_train, natural = (
        next(r for r in prof.feature_stats_recipes if r.get(k) == v)
        for k, v in (("benchmark", "cifar10"), ("source", "natural"))
    )
    assert prof.params["feature_stats"] == cifar_train["output"]
    # no benchmark's statistics come from its own images: CIFAR-10 uses natural-image crops, the others CIFAR-10
    assert prof.feature_stats_for("cifar10") == natural["output"] != cifar_train["output"]
    for b in ("mnist", "fashion_mnist", "coil100"):
        assert prof.feature_stats_for(b) == cifar_train["output"]
    from piad.experiments.labels import leaky_statistics

    for b in prof.benchmarks:
        assert not leaky_statistics({"benchmark": b, "feature_stats": prof.feature_stats_for(b)})
    assert leaky_statistics({"benchmark": "cifar10", "feature_stats": cifar_train["output"]})
    assert len(plan(prof, benchmarks=["coil100"])) == 30


def test_plan_filters():
    prof = profiles.get_profile("smoke")
    jobs = plan(prof, benchmarks=["digits"], classes=[1], runs=[0])
    assert [j.key for j in jobs] == ["digits/1/0"]
    assert [j.key for j in plan(prof, benchmarks=["digits-ablation-l2"])] == ["digits-ablation-l2/0/0"]
    # a benchmark name selects its ablation experiments too, unless they are left out
    with_ablation = {j.key for j in plan(prof, benchmarks=["digits"], classes=[0], runs=[0])}
    assert {"digits/0/0", "digits-ablation-l2/0/0", "digits-ablation-l2_manual/0/0"} <= with_ablation
    assert [j.key for j in plan(prof, benchmarks=["digits"], classes=[0], runs=[0], ablation=False)] == ["digits/0/0"]


def test_no_ablation_flag_reaches_the_plan(tmp_path):
    from piad.cli import main

    args = [
        "reproduce",
        "--profile",
        "smoke",
        "--benchmarks",
        "digits",
        "--classes",
        "0",
        "--runs",
        "0",
        "--dry-run",
        "--results-dir",
        str(tmp_path / "res"),
        "--work-dir",
        str(tmp_path / "runs"),
    ]
    import contextlib
    import io

    for extra, expected in (([], {"digits/0/0", "digits-ablation-l2/0/0"}), (["--no-ablation"], {"digits/0/0"})):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(args + extra) == 0
        would = {ln.split()[-1] for ln in out.getvalue().splitlines() if ln.strip().startswith("would run")}
        assert expected <= would and (not extra or would == expected), out.getvalue()


def test_is_finished(tmp_path):
    assert not is_finished(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.5, "iterations": 10}))
    assert not is_finished(tmp_path)  # no executed notebook yet
    (tmp_path / NOTEBOOK).write_text("{}")
    assert is_finished(tmp_path, 10)
    assert not is_finished(tmp_path, 20)  # asked for a longer run: not finished


def test_dry_run_skips_finished(tmp_path):
    res = tmp_path / "results"
    done = res / "digits" / "0" / "0"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.5, "iterations": 10}))
    (done / NOTEBOOK).write_text("{}")
    lines = []
    rc = reproduce.reproduce(
        "smoke", benchmarks=["digits"], results_dir=res, work_dir=tmp_path / "runs", dry_run=True, log=lines.append
    )
    assert rc == 0
    assert "8 runs selected, 1 already finished, 7 to run" in lines[0]  # digits + its ablation
    assert not any("digits/0/0" in ln for ln in lines[1:])


def test_cli_passes_the_reproduce_and_book_flags_to_the_runner(monkeypatch, capsys):
    from piad import book
    from piad.cli import main

    calls = []
    monkeypatch.setattr(reproduce, "reproduce", lambda *a, **kw: calls.append((a, kw)) or 0)
    monkeypatch.setattr(book, "build_book", lambda **kw: calls.append(("book", kw)) or 0)
    assert (
        main(
            [
                "reproduce",
                "--profile",
                "smoke",
                "--jobs",
                "2",
                "--classes",
                "0",
                "--iterations",
                "5",
                "--executor",
                "slurm",
                "--cpus-per-job",
                "3",
                "--no-summaries",
                "--dry-run",
            ]
        )
        == 0
    )
    ((args, kw),) = calls
    assert args == ("smoke", None, [0], None, "auto", 2, 5, None, None)
    assert kw["executor"] == "slurm" and kw["cluster"].cpus_per_job == 3 and kw["cluster"].wait
    assert not kw["summaries"] and kw["dry_run"] and not kw["status"] and kw["ensemble"] is None
    calls.clear()
    assert main(["book", "--profile", "offline", "--run", "--jobs", "3", "-W"]) == 0
    (args, kw), book_call = calls
    assert args == ("offline",) and {k: v for k, v in kw.items() if k != "log"} == {"device": "auto", "jobs": 3}
    assert book_call == (
        "book",
        {"path_output": None, "warningiserror": True, "keep_going": False, "all_pages": False, "repository": None},
    )
    calls.clear()
    assert main(["book", "--run"]) == 2 and calls == []
    assert "--run needs --profile" in capsys.readouterr().err
    a = build_parser().parse_args(["book", "--profile", "offline"])
    assert a.command == "book" and not a.run


def test_run_job_end_to_end(tmp_path):
    """One smoke run through papermill: result folder holds the small files and provenance, no checkpoints."""
    pytest.importorskip("papermill")
    prof = profiles.get_profile("smoke")
    job = plan(prof, benchmarks=["digits"], classes=[0], runs=[0])[0]
    res = run_job(prof, job, tmp_path / "results", tmp_path / "runs", "cpu", 4, 1)
    assert res["status"] == "ok", res
    out = tmp_path / "results" / "digits" / "0" / "0"
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "train_evaluate.ipynb",
        "config.json",
        "metrics.json",
        "provenance.json",
        "log.csv",
        "policy.csv",
        "samples/latest.png",
    } <= names
    assert not any(n.startswith("checkpoints") for n in names)
    assert (tmp_path / "runs" / "digits" / "0" / "0" / "checkpoints" / "latest.pt").exists()
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("git_commit", "device", "data_source", "weights", "wall_seconds", "deviations_from_paper"):
        assert key in prov
    assert prov["device"] == "cpu" and prov["iterations"] == 4
    assert prov["hardware"]["logical_cpus"] == os.cpu_count() and prov["hardware"]["accelerator"] is None
    assert prov["hardware"]["processor"]  # the machine the timings come from
    assert any("random" in d for d in prov["deviations_from_paper"])
    assert prov["data"]["benchmark"] == "digits" and prov["weights"]["vgg_weights"]["name"] == "random VGG-19"
    assert is_finished(out, 4)
    # nothing copied to results/ shows where it was computed (the work folder's config.json keeps its paths)
    machine = [str(repo_root()), str(assets_dir()), str(tmp_path), "/home/", "/root/", "/tmp/", "site-packages"]
    for f in out.rglob("*"):
        if f.is_file() and f.suffix not in (".png", ".npz"):
            text = f.read_text()
            assert not [m for m in machine if m in text], (f.name, [m for m in machine if m in text])
    assert prov["parameters"]["out_dir"] == "<work-dir>/digits/0/0"
    from sklearn.metrics import roc_auc_score

    from piad.run.scorefile import load_scores  # the per-image scores travel with the result, exactly

    z = load_scores(out / "scores.npz")
    assert (
        roc_auc_score(z.labels, z.scores.astype("float64")) == json.loads((out / "metrics.json").read_text())["roc_auc"]
    )


@pytest.mark.parametrize("command", ["reproduce", "book"])
def test_runner_commands_document_their_flags(command, capsys):
    from piad.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and all(f in text for f in action.option_strings), action.option_strings


def test_ensemble_size_defaults_to_gpu_only():
    assert resolve_ensemble_size(None, "cpu") == 1
    assert resolve_ensemble_size(3, "cpu") == 3
    with pytest.raises(ValueError, match="ensemble"):
        resolve_ensemble_size(0, "cpu")
    jobs = plan(profiles.get_profile("smoke"))
    groups = ensemble_groups(jobs, 3)
    assert sorted(j.key for g in groups for j in g) == sorted(j.key for j in jobs)
    assert all(len(g) <= 3 and len({j.experiment.name for j in g}) == 1 for g in groups)


def test_reproduce_trains_runs_as_a_batched_ensemble(tmp_path, monkeypatch):
    """`--ensemble 2` trains both smoke runs of digits class 0 in one EnsembleTrainer; the notebooks then only
    evaluate, and the results equal those of runs trained one by one (up to float rounding). The profile asks for
    channels_last: the runs trained one by one use it, the ensemble (NCHW) says it did not."""
    pytest.importorskip("papermill")
    import dataclasses

    smoke = dataclasses.replace(profiles.get_profile("smoke"), ablation=None, channels_last=("digits",))
    monkeypatch.setattr(reproduce, "get_profile", lambda name: smoke)
    kw = dict(benchmarks=["digits"], classes=[0], iterations=4, summaries=False, log=lambda m: None)
    lines = []
    rc = reproduce.reproduce(
        "smoke",
        results_dir=tmp_path / "ens",
        work_dir=tmp_path / "ens_runs",
        device="cpu",
        ensemble=2,
        **{**kw, "log": lines.append},
    )
    assert rc == 0, lines
    assert any(ln.startswith("[ensemble] training 2 runs together: digits/0/0, digits/0/1") for ln in lines)
    rc = reproduce.reproduce(
        "smoke", results_dir=tmp_path / "one", work_dir=tmp_path / "one_runs", device="cpu", ensemble=1, **kw
    )
    assert rc == 0
    for run in ("0", "1"):
        ens = tmp_path / "ens" / "digits" / "0" / run
        one = tmp_path / "one" / "digits" / "0" / run
        prov = json.loads((ens / "provenance.json").read_text())
        assert prov["trained_in_ensemble"]["members"] == ["digits/0/0", "digits/0/1"]
        assert prov["memory_layout"] == "NCHW" and prov["parameters"]["channels_last"] is True
        assert prov["precision"] == "fp32" and prov["parameters"]["bf16"] is False
        alone = json.loads((one / "provenance.json").read_text())
        assert alone["trained_in_ensemble"] is None and alone["memory_layout"] == "channels_last"
        a, b = json.loads((ens / "metrics.json").read_text()), json.loads((one / "metrics.json").read_text())
        assert a["iterations"] == b["iterations"] == 4
        assert a["roc_auc"] == pytest.approx(b["roc_auc"], abs=1e-3)
        assert (ens / "config.json").read_text() == (one / "config.json").read_text()


def test_dry_run_names_every_missing_input_before_training(tmp_path):
    """Without the offline assets, $PIAD_DATA or downloads, the offline profile stops with exit code 2 and says
    how to get each missing input (CIFAR-10, the substitute VGG-19), before any run starts."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "assets"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PIAD_DATA"}
    env.update(PIAD_ASSETS=str(empty), PIAD_DOWNLOAD="0", PIAD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "piad.cli",
            "reproduce",
            "--profile",
            "offline",
            "--benchmarks",
            "cifar10",
            "--dry-run",
            "--results-dir",
            str(tmp_path / "res"),
            "--work-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=repo_root(),
    )
    assert r.returncode == 2, r.stdout + r.stderr
    missing = [ln for ln in r.stdout.splitlines() if "MISSING" in ln]
    assert len(missing) == 2, r.stdout
    cifar = next(ln for ln in missing if "cifar10 data" in ln)
    assert "cifar-10-python.tar.gz" in cifar and "$PIAD_DOWNLOAD=0" in cifar
    vgg = next(ln for ln in missing if "vgg19_caffe_normalised_to_relu3_1.pth" in ln)
    assert "not published" in vgg and "vgg_weights=imagenet" in vgg
    assert "would run" not in r.stdout and not (tmp_path / "runs").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "piad.cli",
            "reproduce",
            "--profile",
            "offline",
            "--benchmarks",
            "cifar10",
            "--dry-run",
            "--results-dir",
            str(tmp_path / "res"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "PIAD_DOWNLOAD": "1"},
        cwd=repo_root(),
    )
    assert r.returncode == 2 and "torchvision.datasets.CIFAR10 downloads it" in r.stdout  # only the VGG missing
    assert [ln for ln in r.stdout.splitlines() if "MISSING" in ln] == [vgg]


def test_precision_record_follows_the_bf16_parameter_unless_trained_in_an_ensemble():
    from piad.experiments.provenance import precision

    assert precision({"bf16": True}) == "bf16 autocast"
    assert precision({"bf16": False}) == precision({}) == "fp32"  # runs from before the parameter
    assert precision({"bf16": True}, {"members": ["a/0/0", "a/0/1"]}) == "fp32"


def test_provenance_records_the_code_a_job_started_with_and_a_change_during_it(tmp_path):
    """The kernel imports piad when the job starts, so the commit and dirty flag recorded are those at the start;
    if the working tree changed while the job ran, the state at the end is recorded as well, not instead."""
    from piad.experiments.provenance import git_state, provenance

    prof = profiles.get_profile("smoke")
    job = plan(prof, benchmarks=["digits"], classes=[0], runs=[0])[0]
    params = {"out_dir": str(tmp_path), "vgg_weights": "random", "layer": "relu3_1", "feature_stats": "none"}
    metrics = {"device": "cpu", "iterations": 4, "roc_auc": 0.5}
    now = git_state(repo_root())
    same = provenance(prof, job, params, metrics, 1.0, 0.0, repo_root(), code=dict(now))
    assert {k: same[k] for k in now} == now and "git_state_at_finish" not in same
    before = {"git_commit": "0" * 40, "git_dirty": False}
    moved = provenance(prof, job, params, metrics, 1.0, 0.0, repo_root(), code=before)
    assert moved["git_commit"] == "0" * 40 and moved["git_dirty"] is False
    assert moved["git_state_at_finish"] == now


def test_offline_profile_adds_seeds_to_three_mnist_classes_only():
    """Runs 1, 2 of MNIST classes 2, 3, 8 (the seed study); every other class keeps one run."""
    from piad.experiments.grid import plan
    from piad.experiments.profiles import OFFLINE_SEEDS, get_profile

    keys = {j.key for j in plan(get_profile("offline"), benchmarks=["mnist"], ablation=False)}
    assert {f"mnist/{c}/{r}" for c in OFFLINE_SEEDS for r in (1, 2)} <= keys
    assert len(keys) == 10 + 2 * len(OFFLINE_SEEDS) and "mnist/0/1" not in keys
    assert not [j for j in plan(get_profile("offline"), benchmarks=["cifar10"]) if j.run != 0]
