"""The alternating schedule of one training iteration, shared by `Trainer` and `EnsembleTrainer` (book: Method >
Training, spec-iteration): n_dis critic steps, then one E+G step whose weights lambda_E, lambda_G are updated every
`policy_every` iterations. The math is piad.model.objective; a subclass supplies the networks, optimisers, batches,
noise and its reconstruction loss.
"""

from __future__ import annotations

import torch

from piad.model.objective import critic_update, encoder_generator_update
from piad.run.fitloop import IterationAbandoned


class AlternatingSteps:
    """Mixin: `critic_step`, `encoder_generator_step` and `train_iteration` over the attributes a trainer defines
    (`cfg`, `device`, `members`, `rule`, `watch`, `opt_dx`, `opt_dz`, `opt_eg`, `iteration`, `_last`) and its methods
    `modules()` (E, G, D_X, D_Z), `eg_params()` (E's and G's parameter lists), `_batch()`, `_z()`,
    `reconstruction_loss(x, idx, rec)` and `_log_policy(iteration)`."""

    fused_eg = True  # one backward through E for the adversarial and reconstruction terms
    bf16 = False  # bf16 autocast of both steps (weights, optimiser state and checkpoints stay fp32)
    step_mode = "eager"  # "static" / "graph": the restructured, capturable iteration (piad.run.captured)

    @staticmethod
    def stop_pending() -> bool:
        """True when a stop request should abandon the current iteration (set by piad.run.fitloop.fit)."""
        return False

    def critic_step(self) -> None:
        x, _ = self._batch()
        z = self._z()
        self._last.update(
            critic_update(
                self.members, self.modules(), (self.opt_dx, self.opt_dz), x, z, self.cfg.gp_weight, self.cfg.eps_drift
            )
        )

    def encoder_generator_step(self, iteration: int) -> None:
        x, idx = self._batch()
        z = self._z()
        update = iteration % self.cfg.policy_every == 0
        params_e, params_g = self.eg_params()
        self._last.update(
            encoder_generator_update(
                self.members,
                self.modules(),
                self.opt_eg,
                x,
                z,
                lambda rec: self.reconstruction_loss(x, idx, rec),
                params_e,
                params_g,
                self.rule,
                update_rule=update,
                fused=self.fused_eg,
            )
        )
        if update:
            self._log_policy(iteration)

    def train_iteration(self) -> None:
        if self.step_mode != "eager":
            from piad.run.captured import static_train_iteration

            return static_train_iteration(self)
        it = self.iteration + 1
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for _ in range(self.cfg.n_dis):
                self.critic_step()
                if self.stop_pending():  # Ctrl-C during a long critic loop (piad.run.fitloop)
                    raise IterationAbandoned(it)
            self.encoder_generator_step(it)
        self.watch.update(it, self._last)
        self.iteration = it
