"""piad.run.training.Trainer's set-up, without training (fast: the first test file of training.py's mutation run):
the seeded streams that committed runs depend on, the batch sampler, the data check, the feature cache and the
sample grid."""

import math
import re

import pytest
import torch
from conftest import book_value

from piad.errors import ConfigError
from piad.run import training
from piad.run.config import make_config
from piad.run.training import IndexSampler, Trainer


def _trainer(tmp_path, channels_last=False, **kw):
    (tmp_path / "run").mkdir(exist_ok=True)
    cfg = make_config("synthetic", {"iterations": 4, **kw})
    return Trainer(cfg, tmp_path / "run", progress=False, channels_last=channels_last)


def test_the_batches_of_seed_s_are_drawn_from_seed_s_plus_1(tmp_path):
    """Committed runs repeat only while this stream stays: an odd seed included (seed | 1 would equal seed)."""
    tr = _trainer(tmp_path, seed=3)
    ref = IndexSampler(tr.train_x.shape[0], tr.cfg.batch_size, 4, torch.device("cpu"))
    for _ in range(3):
        assert torch.equal(tr.sampler.next(), ref.next())


@pytest.mark.parametrize(("n", "batch"), [(10, 4), (3, 8), (5, 5)])
def test_the_sampler_gives_full_batches_and_each_index_equally_often(n, batch):
    s = IndexSampler(n, batch, 0, torch.device("cpu"))
    per_epoch = max(1, math.ceil(batch / n)) * n  # a dataset smaller than a batch is repeated, never a batch cut
    batches = [s.next() for _ in range(per_epoch // batch + 1)]  # one epoch and the next epoch's first batch
    assert all(len(b) == batch for b in batches)
    counts = torch.bincount(torch.cat(batches[:-1]), minlength=n)
    assert counts.max() - counts.min() <= max(1, math.ceil(batch / n))


def test_data_of_another_shape_is_refused(tmp_path):
    from piad.data import load_for_config

    cfg = make_config("synthetic", {"iterations": 4})
    data = load_for_config(cfg)
    for wrong in (data.train[:, :, :-1, :-1], torch.cat([data.train, data.train], 2)):  # smaller and larger
        shape = re.escape(str(tuple(wrong.shape[1:])))
        with pytest.raises(ConfigError, match=rf"data images have shape {shape} but the config expects"):
            Trainer(cfg, tmp_path, data=type(data)(**{**vars(data), "train": wrong}), progress=False)


def test_features_are_cached_under_the_limit_and_not_above_it(tmp_path, monkeypatch):
    tr = _trainer(tmp_path)
    assert tr.train_f is not None and torch.equal(tr.train_f, tr.distance.features(tr.train_x))
    size = tr.train_f[0].numel() * tr.train_f.element_size() * tr.train_x.shape[0]
    monkeypatch.setattr(training, "FEATURE_CACHE_LIMIT_BYTES", size)
    assert _trainer(tmp_path).train_f is not None  # exactly at the limit: cached
    monkeypatch.setattr(training, "FEATURE_CACHE_LIMIT_BYTES", size - 1)
    assert _trainer(tmp_path).train_f is None


def test_the_sample_grid_shows_images_in_their_range(tmp_path, monkeypatch):
    grids = []
    monkeypatch.setattr(training, "save_sample_grid", lambda out, it, grid: grids.append(grid))
    tr = _trainer(tmp_path)
    tr.save_samples()
    (grid,) = grids
    assert grid.shape[0] == 24 and 0 <= grid.min() and grid.max() <= 1
    assert torch.allclose(grid[8:16], (tr.display_x + 1) / 2)  # the real images, unchanged
    assert grid.std() > 0.05


def test_a_dataset_smaller_than_a_batch_is_repeated_just_enough_times():
    """The first batch is the start of ceil(batch / n) seeded permutations, drawn from the sampler's generator."""
    s = IndexSampler(3, 8, 5, torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randperm(3, generator=g) for _ in range(math.ceil(8 / 3))])[:8]
    assert torch.equal(s.next(), expected)
    assert s.perm.numel() == 9


@pytest.mark.parametrize("cuda", [False, True])
def test_auto_picks_cuda_when_there_is_one_and_the_cpu_otherwise(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("auto", None):
        assert training.resolve_device(device) == torch.device("cuda" if cuda else "cpu")
    assert training.resolve_device("cpu") == torch.device("cpu")


def test_seed_everything_seeds_torch_numpy_and_random_with_the_seed():
    import random

    import numpy as np

    for seed in (7, 2**32 + 7):  # numpy takes 32 bits: the seed modulo 2**32
        training.seed_everything(seed)
        drawn = (torch.rand(1).item(), np.random.rand(), random.random())
        torch.manual_seed(seed), np.random.seed(7), random.seed(seed)
        assert drawn == (torch.rand(1).item(), np.random.rand(), random.random())


def _corrupt(state, path, value):
    """A copy of a nested state dict with state[path[0]][path[1]]... set to value (or removed for KeyError)."""
    import copy

    out = copy.deepcopy(state)
    d = out
    for k in path[:-1]:
        d = d[k]
    if value is KeyError:
        del d[path[-1]]
    else:
        d[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("networks", "encoder"), KeyError, "does not fit the networks"),
        (("networks",), None, "does not fit the networks"),  # TypeError
        (("optimizers", "dx"), {"state": {}, "param_groups": []}, "does not fit the networks"),  # ValueError
        (("rng",), KeyError, "lacks the state needed to resume"),
        (("iteration",), None, "lacks the state needed to resume"),  # TypeError: int(None)
        (("iteration",), "seven", "lacks the state needed to resume"),  # ValueError
        (("elapsed",), [1.0], "lacks the state needed to resume"),  # TypeError: float([...])
        (("rng", "global", "python"), "[3]", "lacks the state needed to resume"),  # IndexError: py[1]
        (("rng", "global", "torch"), torch.zeros(3, dtype=torch.uint8), "lacks the state needed to resume"),  # Runtime
    ],
    ids=[
        "no-encoder",
        "networks-none",
        "empty-optim",
        "no-rng",
        "iteration-none",
        "iteration-text",
        "elapsed-list",
        "python-rng-short",
        "torch-rng-short",
    ],
)
def test_a_checkpoint_state_that_does_not_load_is_one_checkpoint_error(tmp_path, path, value, says):
    """Whatever part of a saved state is missing or of the wrong type, loading it names the checkpoint problem and
    the way out (--overwrite); no KeyError or TypeError from deep inside torch reaches the user."""
    from piad.errors import CheckpointError

    tr = _trainer(tmp_path)
    state = tr.state_dict()
    with pytest.raises(CheckpointError, match=says) as e:
        _trainer(tmp_path).load_state_dict(_corrupt(state, path, value))
    assert "--overwrite" in str(e.value)
    fresh = _trainer(tmp_path)
    fresh.load_state_dict({**state, "iteration": 3, "elapsed": 12.5})  # the intact state loads
    assert (fresh.iteration, fresh.elapsed) == (3, 12.5)


def test_a_cpu_trainer_leaves_cudnns_global_autotuning_as_it_was(tmp_path, monkeypatch):
    """cudnn.benchmark is process-wide (it makes CUDA convolutions pick algorithms by timing): only a trainer on a
    CUDA device turns it on, so training on the CPU does not change another model's CUDA work in the same process."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    _trainer(tmp_path)
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("seed", [1, 2])  # seeds where seed + k differs from seed | k and seed ^ k
def test_the_latent_noise_and_the_sample_grids_inputs_come_from_seed_plus_2_and_plus_3(tmp_path, seed):
    tr = _trainer(tmp_path, seed=seed)
    assert tr.noise.initial_seed() == seed + 2  # z ~ N(0, I) of every training step
    g = torch.Generator().manual_seed(seed + 3)
    z = torch.randn(8, *tr.nets.latent_shape, generator=g)
    x = tr.data.train[torch.randperm(len(tr.data.train), generator=g)[:8]]
    assert torch.equal(tr.display_z, z) and torch.equal(tr.display_x, x)


def test_adam_is_fused_on_cuda_only(tmp_path):
    """The committed CPU runs used torch's default Adam; the fused kernel (different float order) is for CUDA."""
    tr = _trainer(tmp_path)
    assert not any(opt.defaults.get("fused") for opt in (tr.opt_eg, tr.opt_dx, tr.opt_dz))


def test_channels_last_puts_the_cached_features_in_nhwc(tmp_path):
    """The cached f(x) of the real images meets the reconstructions' features, computed in NHWC: same layout."""
    tr = _trainer(tmp_path, channels_last=True)
    f = tr.train_f
    assert f.dim() == 4 and min(f.shape[1:]) > 1  # else both layouts are the same
    assert f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
    plain = _trainer(tmp_path)
    assert plain.train_f.is_contiguous()


def test_train_uses_the_standard_memory_format_unless_asked(tmp_path):
    """Channels-last is opt-in (`--channels-last`, `channels_last=True`): it helps only the larger CPU networks."""
    tr = training.train(
        make_config("synthetic", {"iterations": 1, "checkpoint_every": 1}), tmp_path / "run", progress=False
    )
    assert tr.channels_last is False and tr.train_x.is_contiguous()


def test_resuming_with_fewer_iterations_than_the_checkpoint_is_refused_and_with_as_many_is_not(tmp_path):
    from piad.errors import ConfigError

    cfg = make_config("synthetic", {"iterations": 2, "checkpoint_every": 1})
    training.train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="iterations=1 is below the checkpoint's iteration 2"):
        training.train(
            make_config("synthetic", {"iterations": 1, "checkpoint_every": 1}),
            tmp_path / "run",
            resume=True,
            progress=False,
        )
    assert training.train(cfg, tmp_path / "run", resume=True, progress=False).iteration == 2  # nothing left to do


def test_a_class_the_benchmark_lacks_is_refused_before_any_data_is_read_or_any_folder_made(tmp_path, monkeypatch):
    """MNIST class 12: refused at once, not after a download of MNIST."""
    from piad.errors import DataError

    def no_data(cfg):
        pytest.fail("the data were read (downloaded) before the class was checked")

    monkeypatch.setattr(training, "load_for_config", no_data)
    with pytest.raises(DataError, match="12"):
        training.train(make_config("mnist", {"normal_class": 12}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_new_trainer_has_trained_for_no_time_and_no_iteration(tmp_path):
    tr = _trainer(tmp_path)
    assert (tr.iteration, tr.elapsed) == (0, 0.0)


def test_the_performance_page_states_the_feature_cache_limit_the_code_uses():
    pattern = r"cache of f\(x\) for all training images \(left out, .*? when it would exceed (\d+) GiB\)"
    assert int(book_value("performance.md", pattern)) << 30 == training.FEATURE_CACHE_LIMIT_BYTES
