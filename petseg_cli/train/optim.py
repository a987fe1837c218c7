"""Optimisers and learning-rate schedules.

``plateau`` steps once per epoch on the validation Dice; ``cosine``, ``onecycle`` and ``constant`` (the
warm-up, then the peak rate: what Schedule-Free AdamW, which needs no schedule, trains with) step once per
batch, over the run's ``epochs`` x batches per epoch (a ``Horizon``: with a time budget, the epochs
estimated to fit, re-planned after every epoch). All of them are torch schedulers whose state (the
step count) goes into last.pth, so a resumed run continues the same curve; the per-batch curves are
drawn from the settings, so resuming with more --epochs stretches what is left of them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from ..base.errors import UsageError

if TYPE_CHECKING:
    import torch

    from ..config.settings import TrainSettings

SCHEDULE_FREE = "schedulefree-adamw"  # Schedule-Free AdamW (Defazio et al. 2024), from the schedulefree package
OPTIMIZERS = ("adam", "adamw", SCHEDULE_FREE)
SCHEDULERS = ("plateau", "cosine", "onecycle", "constant")
PER_BATCH = ("cosine", "onecycle", "constant")
ANNEALING = ("cosine", "onecycle")  # the schedules that end at a low rate: an early stop cuts them short
# What a knob that needs adam or adamw may add: recipe v1's optimiser, rate and schedule (docs/recipes.md).
WITH_A_SCHEDULE = "--optimizer adamw --learning-rate 3e-4 --scheduler cosine"
SAM_EPSILON = 1e-12  # keeps SAM's step finite when the gradient is zero
SCHEDULE_FREE_EXTRA = 'pip install "petseg[recipes]" (or: pip install schedulefree)'
FUSED_ADAM_DEVICES = ("cpu", "cuda")
FUSED_ADAM_ON_CPU_SINCE = (2, 4)  # torch's fused Adam kernels exist on CUDA earlier, on the CPU from 2.4
# One-cycle as torch's OneCycleLR draws it (without its momentum cycling): from lr/25 up to lr, then
# down to lr/25/1e4, both halves cosine; the rise is 30% of the run when no warm-up is given.
ONECYCLE_DEFAULT_RISE = 0.3
ONECYCLE_START = 1 / 25
ONECYCLE_END = ONECYCLE_START / 1e4


def check_settings(t: "TrainSettings") -> None:
    """The optimiser and schedule names, and the warm-up only the per-batch schedules have."""
    for option, value, choices in (("--optimizer", t.optimizer, OPTIMIZERS), ("--scheduler", t.scheduler, SCHEDULERS)):
        if value not in choices:
            raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    if t.warmup_epochs and t.scheduler not in PER_BATCH:
        raise UsageError(
            f"--warmup-epochs {t.warmup_epochs} needs --scheduler cosine, onecycle or constant (plateau has no warm-up: "
            f"add --warmup-epochs 0)"
        )
    if t.optimizer == SCHEDULE_FREE:
        check_schedule_free(t)
    if t.sam_rho < 0 or t.sam_every < 1:
        raise UsageError(f"train.sam_rho must be 0 (off) or more and train.sam_every at least 1, got {t.sam_rho} and {t.sam_every}")
    if t.sam_rho and t.optimizer == SCHEDULE_FREE:
        raise UsageError(f"train.sam_rho (SAM) wraps adam or adamw, not --optimizer {SCHEDULE_FREE} (the default recipe's): "
                         f"add {WITH_A_SCHEDULE}")
    if t.sam_rho and t.precision == "fp16":
        raise UsageError("train.sam_rho (SAM) recomputes the gradient inside the optimiser's step, which fp16's loss scaling "
                         "does not allow: use --precision fp32 or bf16")


def check_schedule_free(t: "TrainSettings") -> None:
    """Schedule-Free AdamW replaces the schedule and averages the weights itself; its package is an extra."""
    import importlib.util

    if importlib.util.find_spec("schedulefree") is None:
        raise UsageError(f"--optimizer {SCHEDULE_FREE} needs the schedulefree package: {SCHEDULE_FREE_EXTRA}")
    if t.scheduler != "constant":
        raise UsageError(f"--optimizer {SCHEDULE_FREE} (the default recipe's) needs no schedule: add --scheduler constant "
                         f"(a warm-up, then its peak rate), or --optimizer adamw for --scheduler {t.scheduler}")
    if t.ema:
        raise UsageError(f"--optimizer {SCHEDULE_FREE} (the default recipe's) averages the weights itself: add --ema 0, "
                         f"or {WITH_A_SCHEDULE} for an EMA")


def early_stop_warning(t: "TrainSettings") -> str | None:
    """What early stopping costs a per-batch schedule (which anneals to the run's last step), or None."""
    if not t.patience or t.scheduler not in ANNEALING:
        return None
    return (
        f"--patience {t.patience} stops training when val Dice has not improved for {t.patience} epochs, which cuts "
        f"the {t.scheduler} schedule while it is still annealing (best.pth keeps the best epoch without it: --patience 0)"
    )


def fused_adam_supported(device_type: str, torch_version: str) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` works on ``device_type`` with this torch (e.g. "2.3.1+cpu")."""
    if device_type not in FUSED_ADAM_DEVICES:
        return False
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    return device_type == "cuda" or (major, minor) >= FUSED_ADAM_ON_CPU_SINCE


def build_optimizer(parameters: Iterable[Any], t: "TrainSettings", device_type: str) -> "torch.optim.Optimizer":
    """Adam or AdamW: one fused kernel for the whole update where torch has one for this device; or
    Schedule-Free AdamW (``follow_model_modes`` then switches it between its two points)."""
    import torch

    if t.optimizer == SCHEDULE_FREE:
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(parameters, lr=t.learning_rate, weight_decay=t.weight_decay)
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[t.optimizer]
    fused = fused_adam_supported(device_type, torch.__version__)
    optimizer = kind(parameters, lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused)
    return sharpness_aware(optimizer, t.sam_rho, t.sam_every) if t.sam_rho else optimizer


def sharpness_aware(base: "torch.optim.Optimizer", rho: float, every: int) -> "torch.optim.Optimizer":
    """``base`` with SAM (sharpness-aware minimisation, Foret et al. 2021) every ``every``-th step: there the
    step's gradient is taken again at the weights moved by ``rho`` along the normalised gradient (the
    ``closure`` the training step passes recomputes it), and ``base`` steps from the unmoved weights with
    it. The other steps are ``base``'s own. Its state (for last.pth) is ``base``'s and the step count."""
    import torch

    class SharpnessAware(torch.optim.Optimizer):
        def __init__(self) -> None:
            super().__init__(base.param_groups, base.defaults)
            self.param_groups = base.param_groups  # the same groups: schedules set base's rates
            self.steps = 0

        @torch.no_grad()
        def step(self, closure: Any = None) -> Any:
            self.steps += 1
            if closure is not None and self.steps % every == 0:
                self.ascend_and_recompute(closure)
            return base.step()

        def ascend_and_recompute(self, closure: Any) -> None:
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            if not params:
                return
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            shifts = torch._foreach_mul([p.grad for p in params], rho / (norm + SAM_EPSILON))
            torch._foreach_add_(params, shifts)
            with torch.enable_grad():
                closure()  # the gradient at the moved weights
            torch._foreach_sub_(params, shifts)

        def state_dict(self) -> dict[str, Any]:
            return {"base": base.state_dict(), "sam_steps": self.steps}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            base.load_state_dict(state_dict["base"])
            self.steps = state_dict["sam_steps"]

    return SharpnessAware()


def follow_model_modes(model: "torch.nn.Module", optimizer: Any) -> None:
    """A schedule-free optimiser trains at one point of its weights (y) and is validated and saved at another
    (x, the average): ``optimizer.train()`` must come before training steps and ``optimizer.eval()`` before
    validation and saving. The training loop already puts the model in training mode before its steps and
    in eval mode before validating (and saves after validating), so the optimiser follows the model: its
    ``train(mode)`` switches the optimiser too. Other optimisers have no modes: nothing changes."""
    if not (callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))):
        return
    switch_model = model.train

    def train(mode: bool = True) -> "torch.nn.Module":
        (optimizer.train if mode else optimizer.eval)()
        return switch_model(mode)

    model.train = train  # nn.Module.eval() and a wrapper's train() (DDP, torch.compile) call it


def cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 1/warmup_steps to 1, then half a cosine down to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 0.5 * (1 + math.cos(math.pi * progress))


def onecycle_factor(step: int, rise_steps: int, total_steps: int) -> float:
    def anneal(start: float, end: float, progress: float) -> float:
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    if step < rise_steps:
        return anneal(ONECYCLE_START, 1.0, step / rise_steps)
    return anneal(1.0, ONECYCLE_END, (step - rise_steps) / max(total_steps - rise_steps, 1))


class Horizon:
    """The epochs a per-batch schedule ends at: the run's --epochs, or (with a time budget) the epochs
    estimated to fit, re-planned after every epoch; the schedule reads it at every step."""

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def build_scheduler(optimizer: "torch.optim.Optimizer", t: "TrainSettings", horizon: Horizon) -> Any:
    from torch.optim import lr_scheduler

    if t.scheduler == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.lr_factor, patience=t.lr_patience)

    def warmup() -> int:  # the warm-up leaves the last epoch to anneal in (a budget may plan one epoch)
        return min(t.warmup_epochs, max(horizon.epochs - 1, 0)) * horizon.steps_per_epoch

    if t.scheduler == "cosine":
        return lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, warmup(), horizon.steps))
    if t.scheduler == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda step: min((step + 1) / warmup(), 1.0) if warmup() else 1.0)

    def rise() -> int:
        return (t.warmup_epochs and warmup()) or round(ONECYCLE_DEFAULT_RISE * horizon.steps)

    return lr_scheduler.LambdaLR(optimizer, lambda step: onecycle_factor(step, rise(), horizon.steps))
