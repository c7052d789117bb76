"""The restructured, capturable iteration (piad.run.captured) is today's step, bitwise, on the CPU: one model and
the stacked ensemble, over weight-rule iterations and epoch rollovers, resumed from a checkpoint; and its region
never waits for the host."""

from __future__ import annotations

import contextlib

import pytest
import torch

from piad.errors import ConfigError
from piad.run.captured import StaticStep
from piad.run.checkpoint import load_checkpoint
from piad.run.config import make_config
from piad.run.ensemble import EnsembleTrainer
from piad.run.training import Trainer, train

ITERS = 32  # synthetic: 64 training images, batch 8, n_dis 2: an epoch every 2.7 iterations
BASE = dict(iterations=ITERS, policy_every=4, log_every=8, checkpoint_every=16, sample_every=ITERS, weight_decay=1e-2)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _state(t) -> list[torch.Tensor]:
    """Every tensor the next iterations depend on: parameters, Adam moments, lambdas, logged values."""
    if hasattr(t, "nets"):
        params = list(t.nets.parameters())
        lambdas = [t.policy_e.weight, t.policy_g.weight]
        rngs = [t.noise.get_state(), t.sampler.generator.get_state()]
    else:
        params = t.E.params + t.G.params + t.DX.params + t.DZ.params
        lambdas = [p.weight for p in t.policy_e + t.policy_g]
        rngs = [g.get_state() for g in t.noises] + [s.generator.get_state() for s in t.samplers]
    moments = [v for opt in (t.opt_eg, t.opt_dx, t.opt_dz) for s in opt.state.values() for v in s.values()]
    return params + moments + lambdas + rngs + [t.watch.first] + list(t._last.values())


def _assert_bitwise(a, b) -> None:
    sa, sb = _state(a), _state(b)
    assert len(sa) == len(sb)
    for i, (x, y) in enumerate(zip(sa, sb, strict=True)):
        assert torch.equal(x, y), f"tensor {i} differs"


def _trainer(cfg, out, **kw):
    out.mkdir(parents=True, exist_ok=True)  # the weight-rule iterations append to policy.csv
    return Trainer(cfg, out, progress=False, **kw)


def _run(t, n: int) -> None:
    for _ in range(n):
        t.train_iteration()


def _rollovers(t) -> int:
    s = t.sampler if hasattr(t, "sampler") else t.samplers[0]
    return (t.iteration * (t.cfg.n_dis + 1) * t.cfg.batch_size) // s.n


def test_static_step_equals_todays_step_one_model(tmp_path):
    cfg = make_config("synthetic", BASE)
    eager, static = _trainer(cfg, tmp_path / "eager"), _trainer(cfg, tmp_path / "static")
    static.step_mode = "static"
    for _ in range(ITERS):
        eager.train_iteration()
        static.train_iteration()
        _assert_bitwise(eager, static)
    assert isinstance(static._static_step, StaticStep)
    assert _rollovers(static) >= 10 and float(static.policy_e.weight) != 1.0  # epochs rolled, the rule updated
    assert (tmp_path / "static" / "policy.csv").read_text() == (tmp_path / "eager" / "policy.csv").read_text()


def test_static_step_resumed_from_a_checkpoint_equals_uninterrupted(tmp_path):
    full = make_config("synthetic", BASE)
    half = make_config("synthetic", dict(BASE, iterations=ITERS // 2))
    eager = _trainer(full, tmp_path / "eager")
    _run(eager, ITERS)
    a = _trainer(half, tmp_path / "a")
    a.step_mode = "static"
    a.fit()  # writes checkpoints/latest.pt at iteration 16
    b = _trainer(full, tmp_path / "a")
    b.load_state_dict(load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt", full.to_dict()))
    b.step_mode = "static"
    _run(b, ITERS // 2)
    assert b.iteration == ITERS
    _assert_bitwise(eager, b)


def _ensemble(tmp_path, name, iterations=ITERS):
    cfgs = [make_config("synthetic", dict(BASE, run=r, iterations=iterations)) for r in (0, 1, 2)]
    outs = [tmp_path / f"{name}{k}" for k in range(3)]
    for o in outs:
        o.mkdir()
    return EnsembleTrainer(cfgs, outs)


def test_static_step_equals_todays_step_ensemble_with_resume(tmp_path):
    eager, static = _ensemble(tmp_path, "eager"), _ensemble(tmp_path, "static")
    static.step_mode = "static"
    for _ in range(ITERS // 2):
        eager.train_iteration()
        static.train_iteration()
    _assert_bitwise(eager, static)
    # resume: every member from its own checkpoint-format state
    resumed = _ensemble(tmp_path, "resumed")
    resumed.load_member_state_dicts([static.member_state_dict(k) for k in range(3)])
    resumed.step_mode = "static"
    _run(eager, ITERS // 2)
    _run(resumed, ITERS // 2)
    assert _rollovers(resumed) >= 10
    _assert_bitwise(eager, resumed)


_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero")


@contextlib.contextmanager
def _host_syncs_raise(monkeypatch, optimizers=()):
    """Every Tensor method that makes a CUDA device wait for the host raises while the block runs, except inside
    the optimisers' `step`: on the CPU, Adam reads its step count with `.item()` (a CPU tensor); on CUDA the graph
    uses `capturable=True` Adam, whose step count stays on the device (torch itself refuses to capture any other)."""
    inside_step = [0]
    with monkeypatch.context() as m:
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)

            def refuse(*a, _name=name, _original=original, **k):
                if inside_step[0]:
                    return _original(*a, **k)
                raise AssertionError(f"host synchronisation: Tensor.{_name}")

            m.setattr(torch.Tensor, name, refuse)
        for opt in optimizers:

            def step(*a, _step=opt.step, **k):
                inside_step[0] += 1
                try:
                    return _step(*a, **k)
                finally:
                    inside_step[0] -= 1

            m.setattr(opt, "step", step)
        yield


def test_the_region_to_capture_never_waits_for_the_host(tmp_path, monkeypatch):
    with _host_syncs_raise(monkeypatch), pytest.raises(AssertionError, match="host synchronisation"):
        float(torch.ones(()))  # the guard works
    for t in (_trainer(make_config("synthetic", BASE), tmp_path / "one"), _ensemble(tmp_path, "e")):
        t.step_mode = "static"
        _run(t, 5)  # past a weight-rule iteration, so that the region meets updated lambdas
        s = t._static_step
        s.draw_batches()  # host side, outside the region
        with _host_syncs_raise(monkeypatch, (t.opt_dx, t.opt_dz, t.opt_eg)):
            logged = s.region(update_rule=False)
        assert set(logged) >= {"critic_x", "critic_z", "rec", "lambda_e"}
        assert int(s.counter) == 6


def test_cuda_graph_needs_cuda(tmp_path):
    with pytest.raises(ConfigError, match="CUDA"):
        train(make_config("synthetic", dict(BASE, iterations=2)), tmp_path / "r", device="cpu", cuda_graph=True)
    t = _trainer(make_config("synthetic", BASE), tmp_path / "d", cuda_graph=False)
    assert t.step_mode == "eager"


def test_members_that_fit_the_free_memory():
    from piad.run.ensemble_memory import ENSEMBLE_MAX, members_that_fit

    gib = 1 << 30
    assert members_that_fit(2 * gib, 3 * gib, 80 * gib) == 20  # (0.8 * 80 - 2) // 3
    assert members_that_fit(2 * gib, 1 * gib, 140 * gib) == ENSEMBLE_MAX  # capped
    assert members_that_fit(2 * gib, 30 * gib, 16 * gib) == 1  # never below one
    assert members_that_fit(0, 0, gib, cap=7) == 7


def test_reproduce_cuts_ensembles_to_the_members_that_fit(tmp_path, monkeypatch):
    """On CUDA without --ensemble, each experiment's groups are cut to the measured fit (one probe per experiment)."""
    import piad.run.ensemble as ens
    import piad.run.ensemble_memory as mem
    from piad.experiments import jobs
    from piad.experiments.grid import plan
    from piad.experiments.profiles import get_profile

    probes, trained = [], []
    monkeypatch.setattr(mem, "ensemble_size_by_memory", lambda cfg, device, cap: probes.append(cap) or 3)

    class Done:
        mode, diverged = "vmap", {}

    monkeypatch.setattr(ens, "train_ensemble", lambda cfgs, outs, *a, **k: trained.append(len(cfgs)) or Done())
    prof = get_profile("smoke")
    todo = plan(prof, ablation=False) * 2  # 8 jobs of one experiment (digits: 2 classes x 2 runs, twice)
    records = jobs.train_ensembles(prof, todo, tmp_path, "cpu", 2, 1, 40, log=lambda m: None, fit_memory=True)
    assert probes == [40] and trained == [3, 3, 2] and len(records) == len({j.key for j in todo})
