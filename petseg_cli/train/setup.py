"""Everything a training step needs, built from the settings: the model (and the network the steps
run), the optimiser, the loss, the EMA, the loaders and the schedule; and whether to compile them."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch

from ..base.console import info
from ..base.formatting import parse_duration
from ..data.oxford_pet import LoadedSplit
from ..data.transforms import normalize
from ..models.losses import build_loss
from ..machine.compile import (
    BACKGROUND_WAIT_SHARE, CompileDecision, announce_compilation, decide_compile, has_cxx_compiler, planned_steps, use_petseg_cache,
)
from ..models import build_model, count_parameters, encoder_of
from .optim import PER_BATCH, Horizon, build_optimizer, build_scheduler, follow_model_modes
from ..config.settings import Settings
from .background_compile import TRAINING, VALIDATION, BackgroundCompile
from .ema import WarmEMA
from .loaders import make_loaders
from .machine import Machine


def model_args(settings: Settings) -> dict[str, Any]:
    return {"cbam": settings.model.cbam}


class Training:
    """The parts of one training; ``model`` holds the raw weights (checkpoints never see the wrappers)."""

    def __init__(
        self, settings: Settings, run_dir: Path, machine: Machine, splits: dict[str, LoadedSplit], pretrained: bool = True
    ) -> None:
        """``pretrained``: load the encoder weights the settings name (a resumed run restores its own)."""
        self.settings, self.run_dir, self.machine, self.splits = settings, run_dir, machine, splits
        self.device, self.dist, self.precision = machine.device, machine.dist, machine.precision
        self.memory_format = machine.memory_format
        t = settings.train

        # The model, and the network the steps run: wrapped for several processes (compiled by
        # compile_model). Validation runs the model itself (or its EMA), which needs no other process.
        torch.manual_seed(t.seed)
        self.model = build_model(settings.model.name, cbam=settings.model.cbam)
        self.encoder = encoder_of(settings.model.name, self.model)
        if pretrained and settings.model.encoder_weights != "none":
            from .encoder_weights import load_encoder_weights

            info(load_encoder_weights(self.encoder, settings.model.encoder_weights, settings.download))
        self.model.to(self.device, memory_format=self.memory_format)
        self.parameters = count_parameters(self.model)
        self.train_net = self.dist.wrap(self.model, self.device)
        self.ema = WarmEMA(self.model, t.ema) if t.ema > 0 else None
        self.validated = self.ema.module if self.ema is not None else self.model  # what validation scores
        self.eval_net = self.validated
        self.compiled = CompileDecision(False, "not decided yet")  # compile_model decides, once the run's epochs are known
        self.background: BackgroundCompile | None = None  # compiles a budgeted run's steps while they run eagerly
        self._compiled_calls: set[str] = set()
        self._compiling_seconds = 0.0  # spent in compiled models' first calls so far (first_compiled_call)

        self.optimizer = build_optimizer(self.model.parameters(), t, self.device.type)
        follow_model_modes(self.model, self.optimizer)  # a schedule-free optimiser's train/eval follow the model's
        self.scaler = self.precision.grad_scaler()
        self.loss_fn = build_loss(t)

        # The data, and the schedule (the per-batch ones count batches).
        self.train_loader, self.val_loader = make_loaders(settings, splits, machine.workers, self.device, self.dist)
        self.horizon = Horizon(t.epochs, len(self.train_loader))  # a time budget re-plans its epochs
        self.scheduler = build_scheduler(self.optimizer, t, self.horizon)
        self.per_batch_schedule = t.scheduler in PER_BATCH

    @property
    def compile_seconds(self) -> float:
        """Seconds the steps spent compiling (or waiting for a background compilation) so far: a one-off
        cost, which the time budget counts as used but leaves out of the epochs' pace."""
        return self._compiling_seconds + (self.background.waited if self.background is not None else 0.0)

    @property
    def weights(self) -> str:
        """What validation scores and the checkpoints' state_dict hold: "ema" or "raw"."""
        return "ema" if self.ema is not None else "raw"

    def compile_model(self, start_epoch: int) -> CompileDecision:
        """Decide --compile (auto: from this machine and the steps left to train) and compile if so."""
        t = self.settings.train
        cpu = self.device.type == "cpu"
        steps = planned_steps(t.epochs - start_epoch, len(self.train_loader))
        self.compiled = decide_compile(
            t.compile, self.device.type, self.precision.name, self.precision.fast_bf16, steps,
            cxx_compiler=has_cxx_compiler() if cpu else True,
        )
        if not self.compiled.enabled:
            return self.compiled
        use_petseg_cache()
        budget = parse_duration(t.time)
        if budget > 0 and not self.dist.enabled:  # a budget: never wait for a compilation longer than it repays
            self.compiled = replace(self.compiled, reason=f"{self.compiled.reason}; in the background (a time budget)")
            plain = {TRAINING: self.train_net, VALIDATION: self.eval_net}
            wait = BACKGROUND_WAIT_SHARE * budget
            self.background = BackgroundCompile(plain, t.batch_size, wait, self.precision.autocast, info)
        else:
            self.train_net = torch.compile(self.train_net)
            if self.ema is None and not self.dist.enabled:
                self.eval_net = self.train_net
            else:
                self.eval_net = torch.compile(self.validated)
        return self.compiled

    def network(self, phase: str, images: torch.Tensor) -> torch.nn.Module:
        """What ``phase``'s step (TRAINING or VALIDATION) runs on ``images``."""
        if self.background is not None:
            return self.background.network(phase, images)
        return self.train_net if phase == TRAINING else self.eval_net

    def first_compiled_call(self, what: str, size: int | None = None) -> ContextManager[None]:
        """Announces (and times) the call that compiles ``what`` (at ``size`` px: a new size compiles again);
        nothing for an eager model or later calls. Their seconds add up in ``compile_seconds``: a one-off
        cost, which the time budget counts as used but leaves out of the epochs' pace."""
        key = what if size is None else f"{what} at {size} px"
        if not self.compiled.enabled or self.background is not None or key in self._compiled_calls:
            return nullcontext()
        self._compiled_calls.add(key)
        return self._compiling(key)

    @contextmanager
    def _compiling(self, what: str) -> Iterator[None]:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        started = time.perf_counter()
        with announce_compilation(what, info, sync):
            yield
        self._compiling_seconds += time.perf_counter() - started

    def to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batches cross to the device (asynchronously from pinned memory), then become floats."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return normalize(images, self.settings.data.normalization), masks.to(self.device, non_blocking=True)

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics (of the model and of its EMA) to every process, before they
        validate: each process's steps updated them from its own share of the batch."""
        self.dist.broadcast_buffers(self.model)
        if self.ema is not None:
            self.dist.broadcast_buffers(self.ema.module)
