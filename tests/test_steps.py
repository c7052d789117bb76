"""piad.run.steps: the alternating schedule of one iteration (book: Method > Training, spec-iteration), observed on a
real tiny Trainer whose two updates are recorded on their way through (the math itself: test_objective.py).

Fast (a few iterations on the synthetic data): the first test file of steps.py's mutation run.
"""

import pytest
import torch

from piad.run import steps
from piad.run.config import make_config
from piad.run.fitloop import IterationAbandoned
from piad.run.training import Trainer


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A tiny Trainer; `calls` lists ("critic", batch) and ("eg", batch, update_rule, fused) in call order, and
    ("policy", iteration) for every weight-policy record."""
    calls = []
    real_critic, real_eg = steps.critic_update, steps.encoder_generator_update

    def critic(members, modules, opts, x, z, gp_weight, eps_drift):
        calls.append(("critic", x, gp_weight, eps_drift))
        return real_critic(members, modules, opts, x, z, gp_weight, eps_drift)

    def eg(members, modules, opt, x, z, rec_loss, params_e, params_g, rule, update_rule, fused):
        calls.append(("eg", x, update_rule, fused, rec_loss))
        return real_eg(
            members, modules, opt, x, z, rec_loss, params_e, params_g, rule, update_rule=update_rule, fused=fused
        )

    monkeypatch.setattr(steps, "critic_update", critic)
    monkeypatch.setattr(steps, "encoder_generator_update", eg)

    def make(**kw):
        cfg = make_config(
            "synthetic", {"iterations": 10, "n_dis": 3, "policy_every": 2, "gp_weight": 7.0, "eps_drift": 0.25, **kw}
        )
        (tmp_path / "run").mkdir(exist_ok=True)  # what train() prepares: the policy log is written there
        tr = Trainer(cfg, tmp_path / "run", progress=False)
        real_log = tr._log_policy
        tr._log_policy = lambda it: (calls.append(("policy", it)), real_log(it))
        return tr

    return make, calls


def test_each_iteration_is_n_dis_critic_steps_then_one_encoder_generator_step(recorded):
    make, calls = recorded
    tr = make()
    assert (tr.fused_eg, tr.step_mode, tr.bf16) == (True, "eager", False)  # the defaults: one E/G backward, fp32
    for expected in (1, 2, 3, 4):
        calls.clear()
        tr.train_iteration()
        assert tr.iteration == expected
        kinds = [c[0] for c in calls]
        update = expected % 2 == 0  # policy_every = 2: the rule is updated on iterations 2, 4, ...
        assert kinds == ["critic"] * 3 + ["eg"] + (["policy"] if update else [])
        assert all(c[2:4] == (7.0, 0.25) for c in calls if c[0] == "critic")  # the config's gp_weight, eps_drift
        (eg,) = [c for c in calls if c[0] == "eg"]
        assert eg[2] is update and eg[3] is tr.fused_eg
        if update:
            assert calls[-1] == ("policy", expected)


def test_every_step_draws_its_own_batch_and_the_reconstruction_loss_is_of_the_eg_batch(recorded):
    make, calls = recorded
    tr = make()
    seen = []
    real = tr.reconstruction_loss
    tr.reconstruction_loss = lambda x, idx, rec: (seen.append(x), real(x, idx, rec))[1]
    tr.train_iteration()
    batches = [c[1] for c in calls if c[0] in ("critic", "eg")]
    assert len(batches) == 4 and not any(torch.equal(batches[i], batches[j]) for i in range(4) for j in range(i))
    assert len(seen) >= 1 and all(x is batches[-1] for x in seen)  # L_rec of the E/G step's own batch


def test_the_divergence_watch_sees_each_finished_iteration(recorded):
    make, _ = recorded
    tr = make()
    got = []
    real = tr.watch.update
    tr.watch.update = lambda it, last: (got.append((it, dict(last))), real(it, last))[1]
    tr.train_iteration()
    tr.train_iteration()
    assert [it for it, _ in got] == [1, 2]
    assert got[-1][1] and got[-1][1].keys() == tr._last.keys()  # the losses of both updates, as last recorded


def test_a_stop_during_the_critic_loop_abandons_the_iteration_before_the_eg_step(recorded):
    make, calls = recorded
    tr = make()
    tr.train_iteration()
    calls.clear()
    tr.stop_pending = lambda: True
    with pytest.raises(IterationAbandoned) as e:
        tr.train_iteration()
    assert e.value.args == (2,)
    assert [c[0] for c in calls] == ["critic"]  # stopped after the first critic step: no E/G step
    assert tr.iteration == 1  # the abandoned iteration does not count


def test_the_eager_schedule_runs_unless_a_static_step_is_asked_for(recorded, monkeypatch):
    make, calls = recorded
    tr = make()
    ran = []
    import piad.run.captured as captured

    monkeypatch.setattr(captured, "static_train_iteration", lambda t: ran.append(t))
    tr.train_iteration()
    assert ran == [] and calls
    tr.step_mode = "".join(["ea", "ger"])  # read from a file or built at run time: equal, not the same object
    calls.clear()
    tr.train_iteration()
    assert ran == [] and calls
    tr.step_mode = "static"
    calls.clear()
    tr.train_iteration()
    assert ran == [tr] and calls == []


def test_a_trainer_that_does_not_ask_for_bf16_trains_in_fp32():
    """The ensemble trainer sets no bf16 of its own: the shared steps' default must be fp32 autocast off."""
    from piad.run.ensemble import EnsembleTrainer
    from piad.run.steps import AlternatingSteps

    assert AlternatingSteps.bf16 is False and "bf16" not in vars(EnsembleTrainer)
