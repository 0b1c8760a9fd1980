"""What every trainer of this project does to take an optimizer step, without host syncs.

AdamW fused into one kernel, a grad scaler for every precision whose
device-side inf check makes the optimizer skip a non-finite update, the
exponential learning-rate schedule with warmup, and a guard that counts
skipped updates on the device and stops a run that keeps producing them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from core.distributed import Runtime
from core.errors import UserError

logger = logging.getLogger("so-vits-svc")

MAX_CONSECUTIVE_NONFINITE = 20
# Skipped updates are counted on the device and read at most this many steps apart
# (and at every log step), so a step that does not log never waits for the device.
NONFINITE_CHECK_INTERVAL = 10


class NonFiniteTrainingError(UserError):
    """Losses stayed non-finite: training stops, the last good checkpoint is kept."""


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    learning_rate: float,
    betas: Iterable[float],
    eps: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW as upstream, fused into one kernel where the device has one.

    The fused kernel also takes the grad scaler's device-side `found_inf`, so
    a non-finite update is skipped without the host looking at it.
    """
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        parameters,
        learning_rate,
        betas=tuple(betas),
        eps=eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


def keep_optimizer_fused(optimizer: torch.optim.Optimizer) -> None:
    """Restore the fused flags a loaded state dict (upstream's, say) may have switched off.

    `load_state_dict` takes the saved param groups whole; an unfused group
    would ignore `found_inf` and apply a non-finite update. The fused kernel
    keeps its step counts as float32 on the parameters' device.
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                state["step"] = torch.as_tensor(
                    state["step"], dtype=torch.float32, device=parameter.device
                )


def build_grad_scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """A grad scaler for every precision: dynamic for fp16, a fixed scale of 1 otherwise.

    At scale 1 scaling and unscaling are exact, and the scaler's inf check
    gives the optimizer a device-side `found_inf`: non-finite updates are
    skipped on the device in bf16 and float32 too.
    """
    if runtime.uses_grad_scaler:
        return torch.amp.GradScaler(runtime.device.type)
    scaler = torch.amp.GradScaler(runtime.device.type, init_scale=1.0)
    # The constructor insists on a growing scale; these setters do not.
    scaler.set_growth_factor(1.0)
    scaler.set_backoff_factor(1.0)
    return scaler


def exponential_schedule(
    optimizer: torch.optim.Optimizer,
    decay: float,
    saved: dict[str, Any],
    epoch: int,
    learning_rate: float,
) -> torch.optim.lr_scheduler.ExponentialLR:
    """ExponentialLR by `decay` per epoch: restored exactly, or placed as upstream's.

    A saved schedule is rebuilt without touching the optimizer's restored
    learning rate; otherwise, as upstream, the schedule starts at
    `last_epoch = epoch - 2`.
    """
    if saved:
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
        scheduler.load_state_dict(saved)
        return scheduler
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", learning_rate)
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay, last_epoch=epoch - 2)


def set_learning_rate(
    optimizers: Iterable[torch.optim.Optimizer], learning_rate: float, initial: bool = False
) -> None:
    """Every group of every optimizer at `learning_rate` (warmup, fine-tuning from a base).

    `initial` also makes it the schedule's starting rate (a base model's saved
    groups carry the rate it was trained with).
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
            if initial:
                group["initial_lr"] = learning_rate


def poison_if_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged when finite; otherwise NaN gradients everywhere, so the update is skipped.

    A NaN loss term without a gradient (a constant) would leave finite
    gradients; multiplying by NaN folds the loss into the scaler's inf check.
    Multiplying by exactly 1.0 keeps finite steps bit-for-bit.
    """
    guard = torch.where(torch.isfinite(loss.detach()), 1.0, float("nan"))
    return loss * guard


def optimizer_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    loss: torch.Tensor,
) -> torch.Tensor:
    """Backward, unscale, measure the gradient norm, and step unless something is not finite.

    Nothing here reads a value on the host. A non-finite loss poisons the
    gradients; the scaler's device-side inf check then makes the (fused)
    optimizer skip the update. Under DDP the gradients are averaged before
    the check, so every rank skips the same update with no extra collective.
    Returns the norm, non-finite when the update was skipped. The caller
    calls `scaler.update()` once per step, after its last optimizer.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(poison_if_nonfinite(loss)).backward()
    scaler.unscale_(optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    scaler.step(optimizer)
    return grad_norm.detach()


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """`module`'s parameters take no gradient inside: autograd computes none for them.

    A GAN's generator update needs gradients through the discriminator to its
    input, never for the discriminator's weights; upstream computed those and
    DDP all-reduced them every step, only for the next step to zero them.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


class NonFiniteGuard:
    """Counts skipped (non-finite) updates on the device; reads them only every few steps.

    fp16's overflows are the dynamic scaler's business and are not counted.
    After `MAX_CONSECUTIVE_NONFINITE` skipped updates in a row, `check` raises
    `NonFiniteTrainingError` instead of upstream's silent `exit(0)`.
    """

    def __init__(self, runtime: Runtime, log_interval: int) -> None:
        self.enabled = not runtime.uses_grad_scaler
        self.log_interval = log_interval
        # The current run of skipped steps, and skips since the last read.
        self.run = torch.zeros((), dtype=torch.int64, device=runtime.device)
        self.unread = torch.zeros((), dtype=torch.int64, device=runtime.device)

    def count(self, *grad_norms: torch.Tensor) -> None:
        """Record this step: skipped when any of its gradient norms is not finite."""
        if not self.enabled:
            return
        finite = torch.stack([torch.isfinite(norm) for norm in grad_norms]).all()
        skipped = ~finite
        self.run = torch.where(skipped, self.run + 1, 0)
        self.unread += skipped

    def is_check_step(self, step: int) -> bool:
        return step % NONFINITE_CHECK_INTERVAL == 0 or step % self.log_interval == 0

    def check(self, step: int) -> None:
        """Read the counters (one transfer), warn, and stop after too many in a row."""
        if not self.enabled:
            return
        run, unread = torch.stack((self.run, self.unread)).tolist()
        if unread == 0:
            return
        self.unread.zero_()
        if run > 0:
            logger.warning(
                "step %d: non-finite loss or gradient, update skipped (%d in a row)", step, run
            )
        if unread > run:
            logger.warning(
                "step %d: %d updates with non-finite losses or gradients skipped since the "
                "last check",
                step,
                unread,
            )
        if run >= MAX_CONSECUTIVE_NONFINITE:
            raise NonFiniteTrainingError(
                f"{MAX_CONSECUTIVE_NONFINITE} steps in a row had non-finite losses: training "
                "stopped; the last checkpoint is untouched. Lower the learning rate, check the "
                "data, or use fp32"
            )


def require_finite_weights(name: str, model: torch.nn.Module, step: int) -> None:
    """Refuse to save weights with NaN or inf: the last checkpoint stays the good one."""
    if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
        raise NonFiniteTrainingError(
            f"{name} has non-finite weights at step {step}: not saved; the last checkpoint is "
            "untouched. Lower the learning rate or use fp32"
        )
