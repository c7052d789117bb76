"""The training iteration restructured so that it can be recorded once as a CUDA graph and replayed (issue 30).

Same math as :meth:`piad.run.steps.AlternatingSteps.train_iteration` (n_dis critic steps, then the E/G step;
piad.model.objective), for one model (`Trainer`) and for the stacked ensemble (`EnsembleTrainer`). What changes is
where the state lives, so that one region, :meth:`StaticStep.region`, touches only tensors whose addresses never
change and never waits for the host:

- batches: the samplers' permutations stay on the host (the same seeded `randperm` draws); before each iteration
  the n_dis + 1 index batches (every member's, shifted by its offset) are drawn on the host and copied into one
  static device buffer `idx` ([n_dis + 1, K * B]); the region gathers the images from it;
- noise: the trainer's own generators (one per member), registered with the graph, so that a replay advances them
  exactly as the eager draws do;
- lambda: the region reads static copies of lambda_E, lambda_G (one 0-dim tensor per member), refreshed in place
  after every weight-rule iteration;
- divergence state (piad.model.objective.DivergenceWatch): updated in place, with an on-device iteration counter;
- Adam: on CUDA with a graph, `capturable=True` (fused on CUDA, as the trainers create it): its step counts stay on
  the device.

The weight-rule iterations (every `policy_every`; they read gradient statistics and log the policy) and the first
`WARMUP_ITERATIONS` iterations (on a side stream, as CUDA graph capture requires: cuDNN picks its algorithms) run the
region eagerly; logging, samples and checkpoints stay outside it (piad.run.fitloop). Without a graph (`graph=False`)
every iteration runs the region eagerly: on the CPU that is what the tests compare, bitwise, with today's step.

`mode` of a trainer (`step_mode`): "eager" (today's step), "static" (this module without a graph), "graph" (this
module, recorded once and replayed; CUDA only).
"""

from __future__ import annotations

import torch

from piad.errors import ConfigError
from piad.model.objective import WeightRule, critic_update, encoder_generator_update

STEP_MODES = ("eager", "static", "graph")
# The graph becomes the default on CUDA only once a GPU check (benchmarks/gpu_check.sh) shows graph == eager
# and a gain; until then CUDA trains eagerly unless asked (`--cuda-graph`).
CUDA_GRAPH_DEFAULT = False
WARMUP_ITERATIONS = 3


def resolve_step_mode(cuda_graph: bool | None, device: torch.device) -> str:
    """The trainer's step mode from the `cuda_graph` option (None: CUDA_GRAPH_DEFAULT on CUDA, eager elsewhere)."""
    if cuda_graph is None:
        return "graph" if (CUDA_GRAPH_DEFAULT and device.type == "cuda") else "eager"
    if cuda_graph and device.type != "cuda":
        raise ConfigError(f"cuda_graph=True needs a CUDA device, not {device}; leave it out (or --no-cuda-graph).")
    return "graph" if cuda_graph else "eager"


class _FixedWeight:
    """A weight policy's face for the captured region: a static lambda tensor."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight


def watch_update_(watch, counter: torch.Tensor, logged: dict[str, torch.Tensor]) -> None:
    """DivergenceWatch.update in place (same result): `counter` is the on-device iteration number."""
    values = torch.stack([v.float() for v in logged.values()])
    newly_bad = ~torch.isfinite(values).all(0) & (watch.first < 0)
    watch.first.copy_(torch.where(newly_bad, counter, watch.first))
    if watch.values is None or watch.values.shape != values.shape:
        watch.values = values.clone()
    else:
        watch.values.copy_(torch.where(newly_bad, values, watch.values))
    watch.names = list(logged)


class StaticStep:
    """The restructured iteration of one trainer (module docstring); `graph=True` records it as a CUDA graph."""

    def __init__(self, trainer, graph: bool, warmup: int = WARMUP_ITERATIONS):
        t = self.t = trainer
        dev = t.device
        if graph and dev.type != "cuda":
            raise ConfigError(f"a CUDA graph needs a CUDA device, not {dev}.")
        self.use_graph, self.warmup = graph, warmup
        self.stacked = t.members.is_stacked
        self.samplers = list(t.samplers) if self.stacked else [t.sampler]
        host = torch.device("cpu")
        for s in self.samplers:  # the permutations stay on the host (the same draws; no per-member copy)
            s.device = host
            if s.perm is not None:
                s.perm = s.perm.cpu()
        self.offsets = t.offsets.tolist() if self.stacked else [0]
        self.n_batches = t.cfg.n_dis + 1
        width = t.members.k * t.cfg.batch_size
        self.idx = torch.zeros(self.n_batches, width, dtype=torch.long, device=dev)
        pin = dev.type == "cuda"
        self._host = [torch.zeros(self.n_batches, width, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._events = [torch.cuda.Event() if pin else None for _ in range(2)]
        self._ring = 0
        rule = t.rule
        self.lam_e = [p.weight.detach().clone() for p in rule.policies_e]
        self.lam_g = [p.weight.detach().clone() for p in rule.policies_g]
        self.static_rule = WeightRule(
            [_FixedWeight(w) for w in self.lam_e],
            [_FixedWeight(w) for w in self.lam_g],
            rule.weight_idx_e,
            rule.weight_idx_g,
        )
        self.counter = torch.tensor(t.iteration, dtype=torch.long, device=dev)
        self.host_iteration = t.iteration
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_logged: dict[str, torch.Tensor] = {}
        self.eager_regions = 0
        if graph:
            for opt in (t.opt_dx, t.opt_dz, t.opt_eg):
                for group in opt.param_groups:
                    group["capturable"] = True

    # -- host side -----------------------------------------------------------------------------------------------
    def draw_batches(self) -> None:
        """The iteration's n_dis + 1 index batches, drawn on the host (sampler by sampler, as `_batch` draws them),
        copied into the static buffer."""
        rows = [
            torch.cat([s.next() + off if off else s.next() for s, off in zip(self.samplers, self.offsets, strict=True)])
            for _ in range(self.n_batches)
        ]
        host = torch.stack(rows)
        if self.idx.device.type != "cuda":
            self.idx.copy_(host)
            return
        i, self._ring = self._ring, 1 - self._ring
        ev = self._events[i]
        ev.synchronize()  # this pinned buffer's previous copy (two iterations ago) has left
        self._host[i].copy_(host)
        self.idx.copy_(self._host[i], non_blocking=True)
        ev.record()

    def refresh_lambdas(self) -> None:
        for bufs, policies in ((self.lam_e, self.t.rule.policies_e), (self.lam_g, self.t.rule.policies_g)):
            for buf, p in zip(bufs, policies, strict=True):
                buf.copy_(p.weight)

    # -- the region ----------------------------------------------------------------------------------------------
    def _gather(self, j: int):
        t, idx = self.t, self.idx[j]
        x = t.train_x[idx]
        if self.stacked:
            x = x.view(t.k, t.cfg.batch_size, *t.train_x.shape[1:])
        return x, idx

    def region(self, update_rule: bool = False) -> dict[str, torch.Tensor]:
        """One iteration on static state: no host synchronisation unless `update_rule` (the weight rule's)."""
        t, m = self.t, self.t.members
        nets = t.modules()
        logged: dict[str, torch.Tensor] = {}
        # (autocast's weight-cast cache must be off while a graph records: torch.cuda.graphs' advice; same math)
        with torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=t.bf16, cache_enabled=not self.use_graph):
            for j in range(t.cfg.n_dis):
                x, _ = self._gather(j)
                z = t._z()
                logged.update(critic_update(m, nets, (t.opt_dx, t.opt_dz), x, z, t.cfg.gp_weight, t.cfg.eps_drift))
            x, idx = self._gather(t.cfg.n_dis)
            z = t._z()
            params_e, params_g = t.eg_params()
            logged.update(
                encoder_generator_update(
                    m,
                    nets,
                    t.opt_eg,
                    x,
                    z,
                    lambda rec: t.reconstruction_loss(x, idx, rec),
                    params_e,
                    params_g,
                    t.rule if update_rule else self.static_rule,
                    update_rule=update_rule,
                    fused=t.fused_eg,
                )
            )
        self.counter += 1
        watch_update_(t.watch, self.counter, logged)
        return logged

    # -- one iteration -------------------------------------------------------------------------------------------
    def _generators(self) -> list[torch.Generator]:
        return [g for g in self.t.members.generators if g is not None]

    def _capture(self) -> None:
        g = torch.cuda.CUDAGraph()
        for gen in self._generators():
            g.register_generator_state(gen)
        for opt in (self.t.opt_dx, self.t.opt_dz, self.t.opt_eg):
            opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(g):
            self.static_logged = self.region(False)
        self.graph = g

    def train_iteration(self) -> None:
        t = self.t
        it = t.iteration + 1
        update = it % t.cfg.policy_every == 0
        self.draw_batches()
        if update or not self.use_graph:
            logged = self.region(update)
            if update:
                self.refresh_lambdas()
                t._log_policy(it)
        elif self.graph is None and self.eager_regions < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                logged = self.region(False)
            torch.cuda.current_stream().wait_stream(side)
            self.eager_regions += 1
        else:
            if self.graph is None:
                self._capture()  # records, runs nothing
            self.graph.replay()
            logged = self.static_logged
        t._last.update(logged)
        t.iteration = self.host_iteration = it


def static_train_iteration(trainer) -> None:
    """`trainer.train_iteration` in step mode "static" or "graph": the StaticStep, (re)built whenever the trainer's
    iteration moved without it (a resume loads new state: the static copies are taken again)."""
    s = getattr(trainer, "_static_step", None)
    if s is None or s.host_iteration != trainer.iteration:
        s = trainer._static_step = StaticStep(trainer, graph=trainer.step_mode == "graph")
    s.train_iteration()
