"""piad.run.checkpoint: what a checkpoint holds, how it is read, and every way reading one is refused.

Fast (no training): this is the test file the mutation run of piad/run/checkpoint.py relies on first.
"""

import errno
import json
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch

from piad.errors import CheckpointError, PiadError, PiadIOError
from piad.run import checkpoint as ck
from piad.run.rundir import latest_checkpoint, snapshot_path


def _draws():
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        float(np.random.normal()),  # the second of a Box-Muller pair comes from numpy's cached Gaussian
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),  # reads Python's cached Gaussian (None until a pair was drawn), part of its state
    )


@pytest.mark.parametrize("cached_gaussian", [False, True])
def test_the_global_random_state_round_trips_through_plain_tensors_and_text(cached_gaussian):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    if cached_gaussian:
        np.random.normal()  # leaves has_gauss = 1 and a cached value in numpy's state
        random.gauss(0.0, 1.0)  # and Python's gauss_next
    state = ck.global_rng_state()
    assert state["numpy"]["has_gauss"] == int(cached_gaussian)
    first = _draws()
    # what torch.load(weights_only=True) accepts: tensors, ints, floats, strings
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["numpy"]["keys"], torch.Tensor)
    assert isinstance(state["python"], str)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    _draws()
    ck.set_global_rng_state(state)
    assert _draws() == first


def test_a_state_saved_and_loaded_from_disk_restores_the_same_draws(tmp_path):
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    np.random.normal()
    path = tmp_path / "latest.pt"
    ck.save_checkpoint(path, {"rng": ck.global_rng_state(), "config": "{}"})
    first = _draws()
    ck.set_global_rng_state(ck.load_checkpoint(path)["rng"])
    assert _draws() == first


def _state(iteration=40, config=None, **extra):
    return {
        "iteration": iteration,
        "config": json.dumps(config or {"lr": 0.0002, "iterations": 100}),
        "networks": {"E": {"w": torch.ones(2)}},
        "optimizers": {"E": {"step": 3}},
        **extra,
    }


def test_a_snapshot_keeps_the_weights_config_and_map_scale_only():
    s = _state(map_scale=torch.tensor(2.5))
    snap = ck.snapshot_of(s)
    assert set(snap) == {"iteration", "config", "networks", "map_scale", "snapshot"}
    assert snap["snapshot"] is True and snap["iteration"] == 40 and snap["config"] == s["config"]
    assert snap["networks"] is s["networks"] and torch.equal(snap["map_scale"], torch.tensor(2.5))
    assert ck.snapshot_of(_state())["map_scale"] is None  # older states had no scale


def test_run_checkpoints_write_the_snapshot_first_then_the_full_state(tmp_path, monkeypatch):
    written = []
    real = ck.save_checkpoint
    monkeypatch.setattr(ck, "save_checkpoint", lambda path, state: (written.append(path), real(path, state)))
    ck.save_run_checkpoints(tmp_path, _state(iteration=7))
    assert written == [snapshot_path(tmp_path, 7), latest_checkpoint(tmp_path)]
    snap, full = ck.load_checkpoint(written[0]), ck.load_checkpoint(written[1])
    assert snap["snapshot"] is True and "optimizers" not in snap and snap["format"] == ck.FORMAT
    assert full["optimizers"] == {"E": {"step": 3}} and full["iteration"] == 7 and "snapshot" not in full


def test_a_missing_snapshot_is_restored_and_an_existing_one_is_left_alone(tmp_path):
    s = _state(iteration=9)
    ck.restore_missing_snapshot(tmp_path, s)
    path = snapshot_path(tmp_path, 9)
    assert ck.load_checkpoint(path)["snapshot"] is True
    path.write_bytes(b"kept")
    ck.restore_missing_snapshot(tmp_path, s)
    assert path.read_bytes() == b"kept"


def test_short_error_is_the_type_and_the_first_line_within_the_limit():
    assert ck.short_error(ValueError("bad value\nand a long traceback")) == "ValueError: bad value"
    assert ck.short_error(KeyError()) == "KeyError: "
    assert ck.short_error(RuntimeError("   \n")) == "RuntimeError: "
    long = ck.short_error(RuntimeError("x" * 500), limit=40)
    assert len(long) == 40 and long.endswith("...") and long.startswith("RuntimeError: xxx")
    exact = RuntimeError("y" * (40 - len("RuntimeError: ")))
    assert ck.short_error(exact, limit=40) == f"RuntimeError: {'y' * 26}"  # exactly the limit: kept whole
    at_default = "RuntimeError: " + "z" * (160 - len("RuntimeError: "))  # the default limit is 160 characters
    assert ck.short_error(RuntimeError(at_default[len("RuntimeError: ") :])) == at_default
    assert len(ck.short_error(RuntimeError("z" * 160))) == 160


@pytest.mark.parametrize(
    "error, words",
    [
        (pickle.UnpicklingError("Weights only load failed: Unsupported global: os.system"), "Python objects"),
        (RuntimeError("an unsupported operand"), "Python objects"),
        (RuntimeError("Weights only load failed. Re-running `torch.load` may run code"), "Python objects"),
        (RuntimeError("Unsupported global: GLOBAL builtins.print"), "Python objects"),
        (EOFError(), "truncated"),
        (OSError(errno.EINVAL, "Invalid argument"), "truncated"),
        (RuntimeError("PytorchStreamReader failed reading zip archive"), "truncated"),
        (RuntimeError("failed finding central directory"), "truncated"),
        (TypeError("what"), "not a tensor file written by torch.save (TypeError)"),
    ],
)
def test_a_refused_load_is_explained_in_piads_words_never_torchs(error, words):
    reason = ck.unsafe_load_reason(error)
    assert words in reason and "weights_only" not in reason


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt' does not exist"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="does not exist"):  # a folder is no checkpoint either
        ck.load_checkpoint(tmp_path / "dir.pt")


def test_files_that_are_not_piad_checkpoints_are_refused_naming_what_they_hold(tmp_path):
    torch.save({"format": "other-v9"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"is not a piad-checkpoint-v1 file \(found 'other-v9'\)"):
        ck.load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"found 'list'"):
        ck.load_checkpoint(tmp_path / "list.pt")
    torch.save({"iteration": 3}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"found None"):
        ck.load_checkpoint(tmp_path / "bare.pt")


class _Code:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path, capsys):
    torch.save({"format": ck.FORMAT, "x": _Code()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="Python objects other than tensors") as e:
        ck.load_checkpoint(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out and "weights_only" not in str(e.value)
    assert "evil.pt" in str(e.value) and "train again" in str(e.value)


def test_a_truncated_checkpoint_is_refused_as_truncated(tmp_path):
    ck.save_checkpoint(tmp_path / "full.pt", _state())
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.load_checkpoint(tmp_path / "cut.pt")
    assert zipfile.is_zipfile(tmp_path / "full.pt")


@pytest.mark.parametrize(
    "code, kind", [(errno.EACCES, PiadIOError), (errno.EIO, PiadIOError), (errno.ENOSPC, PiadIOError)]
)
def test_a_machine_fault_while_reading_is_an_io_error_not_a_bad_file(tmp_path, monkeypatch, code, kind):
    ck.save_checkpoint(tmp_path / "ok.pt", _state())

    def fail(*a, **k):
        raise OSError(code, "simulated")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(PiadError) as e:
        ck.load_checkpoint(tmp_path / "ok.pt")
    assert type(e.value) is kind and not isinstance(e.value, CheckpointError)
    assert "cannot read" in str(e.value) and "ok.pt" in str(e.value)


def test_an_oserror_that_is_not_a_machine_fault_means_a_bad_file(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path / "ok.pt", _state())

    def fail(*a, **k):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CheckpointError, match="truncated or not a file written by torch.save"):
        ck.load_checkpoint(tmp_path / "ok.pt")


def test_a_checkpoint_belongs_to_its_config_up_to_the_resumable_keys(tmp_path):
    cfg = {"lr": 0.0002, "iterations": 100, "betas": (0.5, 0.999), "log_every": 10}
    ck.save_checkpoint(tmp_path / "c.pt", _state(config=cfg))
    assert ck.load_checkpoint(tmp_path / "c.pt", cfg)["iteration"] == 40  # tuples match the saved lists
    longer = dict(cfg, iterations=5000, log_every=1)  # resumable keys may change
    assert ck.load_checkpoint(tmp_path / "c.pt", longer)["iteration"] == 40
    with pytest.raises(CheckpointError, match=r"differing keys \(checkpoint, run\): \{'lr': \(0.0002, 0.1\)\}\. Use"):
        ck.load_checkpoint(tmp_path / "c.pt", dict(cfg, lr=0.1))  # one key: shown whole, no "..."
    with pytest.raises(CheckpointError, match="'new_key': \\(None, 1\\)"):  # a key the checkpoint lacks differs
        ck.load_checkpoint(tmp_path / "c.pt", dict(cfg, new_key=1))
    strict = ck.load_checkpoint(tmp_path / "c.pt", cfg, allowed_keys=set())
    assert strict["iteration"] == 40
    with pytest.raises(CheckpointError, match="'iterations'"):
        ck.load_checkpoint(tmp_path / "c.pt", longer, allowed_keys=set())


def test_many_differing_keys_are_shown_four_at_a_time():
    saved = {f"k{i}": i for i in range(6)}
    state = {"config": json.dumps(saved)}
    with pytest.raises(CheckpointError) as e:
        ck.check_config("c.pt", state, {k: v + 1 for k, v in saved.items()})
    assert str(e.value).count("(") - 1 == 4 and "k3" in str(e.value) and "k4" not in str(e.value)
    assert " ...}" not in str(e.value) and "} ..." in str(e.value)
    with pytest.raises(CheckpointError) as e:
        ck.check_config("c.pt", state, {k: v + (1 if k in ("k0", "k1", "k2", "k3") else 0) for k, v in saved.items()})
    assert "..." not in str(e.value)  # exactly four: all shown
    with pytest.raises(CheckpointError) as e:
        ck.check_config("c.pt", state, {k: v + (k != "k5") for k, v in saved.items()})
    assert "k4" not in str(e.value) and "} ..." in str(e.value)  # five: the fifth is left out


@pytest.mark.parametrize("state", [{}, {"config": None}, {"config": "not json"}])
def test_a_checkpoint_without_a_readable_config_cannot_be_matched(state):
    with pytest.raises(CheckpointError, match="carries no readable config"):
        ck.check_config("c.pt", state, {"lr": 1})
