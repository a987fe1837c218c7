"""The training loop: the recipe's optimiser, loss and schedule, early stopping on validation Dice, an
optional EMA of the weights,
atomic checkpoints every epoch, clean stop on interrupt, exact resume; in one process or several
(torchrun), in the precision and memory format the machine computes fastest."""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from torch.utils.data import DataLoader

from . import __version__, files, runs
from .machine.compile import CompileDecision, announce_compilation, decide_compile, has_cxx_compiler, planned_steps, use_petseg_cache
from .console import err, info, out, warn
from .formatting import duration
from .data.dataset import SeededShuffleSampler, SegmentationDataset
from .data.oxford_pet import LoadedSplit, load_split, split_samples, subset_sizes
from .data.transforms import build_augmentation, normalize
from .errors import PetsegError, UsageError
from .losses import build_loss
from .machine import allocator
from .machine.devices import choose_workers, resolve_device, usable_cores
from .machine.distributed import Context
from .machine.precision import Precision, choose_channels_last
from .metrics import dice_per_image
from .models import build_model, count_parameters, encoder_of
from .optim import PER_BATCH, build_optimizer, build_scheduler
from .settings import Settings
from .validation import validate_settings as validate

COMPLETED, EARLY_STOP, INTERRUPTED, DIVERGED = "completed", "early_stop", "interrupted", "diverged"
EXIT_INTERRUPTED = 130
# Reading the loss on the host waits for the device to finish every step queued so far. The loop reads
# it (and, across processes, agrees on a stop) about every CHECK_SECONDS, at most every MAX_CHECK_EVERY steps.
CHECK_SECONDS = 2.0
MAX_CHECK_EVERY = 64


class Interrupted(Exception):
    pass


class Diverged(Exception):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    stop_reason: str
    best_epoch: int
    best_val_dice: float

    @property
    def exit_code(self) -> int:
        return {INTERRUPTED: EXIT_INTERRUPTED, DIVERGED: 1}.get(self.stop_reason, 0)


def announce(message: str) -> None:
    """A warning on a line of its own, from a signal handler: written straight to the file descriptor
    (no library that may be half-way through an import or a write of its own), on a terminal after
    clearing the progress bar's line (the bar draws itself again below)."""
    import os
    import sys

    stream = sys.stderr
    text = f"warning: {message}\n"
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file
        stream.write(text)
        return
    os.write(fd, (("\r\x1b[2K" if os.isatty(fd) else "") + text).encode())


class StopSignals:
    """What SIGINT and SIGTERM do during training.

    The first one sets ``event``: the loop stops at the next batch and the epoch in progress is dropped. A
    second one stops at once, except while the run's files are being written (``saving``): that write
    finishes first, then training stops. So the files always describe the last finished epoch whole.
    Every message says what the run will really keep.
    """

    def __init__(self, event: threading.Event, saved_epoch: int = 0) -> None:
        self.event = event
        self.saved_epoch = saved_epoch  # the last epoch whose files are written (0: none)
        self.saving_epoch: int | None = None  # the epoch being written, while it is
        self.discard_unsaved = False  # a signal came before the save of the finished epoch began
        self.stop_after_save = False  # a second signal came during a save

    def _kept(self) -> str:
        if self.saved_epoch:
            return f"the run keeps epoch {self.saved_epoch} (petseg train --resume continues from it)"
        return "no epoch has finished, so the run keeps no weights (petseg train --resume starts it from the beginning)"

    def handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.saving_epoch is not None:
            if self.event.is_set():
                self.stop_after_save = True
                announce(f"{name} received again: stopping once epoch {self.saving_epoch} is saved (the save is not cut short)")
            else:
                self.event.set()
                announce(f"{name} received: stopping once epoch {self.saving_epoch} is saved")
            return
        if self.event.is_set():
            announce(f"{name} received again: stopping now; {self._kept()}")
            raise KeyboardInterrupt
        self.event.set()
        self.discard_unsaved = True
        announce(f"{name} received: stopping at the next batch; {self._kept()} (press Ctrl-C again to stop at once)")

    @contextmanager
    def saving(self, epoch: int) -> Iterator[None]:
        """Write the files of ``epoch`` inside this: no signal interrupts it; a second signal received
        meanwhile raises KeyboardInterrupt once they are written. Raises Interrupted instead, writing
        nothing, when a signal came before (its message promised the run the previous epoch)."""
        self.saving_epoch = epoch
        try:
            if self.discard_unsaved and epoch > self.saved_epoch:
                raise Interrupted
            yield
            self.saved_epoch = epoch
        finally:
            self.saving_epoch = None
        if self.stop_after_save:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self.handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def load_data(settings: Settings, data_dir: Path) -> dict[str, LoadedSplit]:
    """The train and val splits, or the part of them that ``data.fraction`` and ``data.limit`` ask for."""
    d = settings.data
    listed = {split: len(split_samples(data_dir, split)) for split in ("train", "val")}
    keep = dict(zip(listed, subset_sizes(listed["train"], listed["val"], d.fraction, d.limit)))
    if keep != listed:
        info(f"training on part of the data: {keep['train']} of {listed['train']} train and {keep['val']} of {listed['val']} val images")
    splits = {}
    for split in ("train", "val"):
        loaded = load_split(
            data_dir, split, d.image_size, warn=warn, cache=d.cache, keep=keep[split], seed=settings.train.seed
        )
        if loaded.skipped:
            warn(f"{len(loaded.skipped)} file(s) skipped in the {split} split")
        splits[split] = loaded
    return splits


def make_loaders(
    settings: Settings, splits: dict[str, LoadedSplit], workers: int, device: torch.device, dist: Context
) -> tuple[DataLoader, DataLoader]:
    """Each process's share of every batch: the same global order whatever the number of processes."""
    t = settings.train
    batch = dist.per_rank_batch(t.batch_size)
    augmentation = build_augmentation(settings.augment, settings.data.image_size)
    train_set = SegmentationDataset(splits["train"].images, splits["train"].masks, augmentation)
    val_set = SegmentationDataset(splits["val"].images, splits["val"].masks)
    sampler = SeededShuffleSampler(len(train_set), t.seed, num_replicas=dist.world_size, rank=dist.rank)
    common = {
        "batch_size": batch,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    # A last batch of one image would break BatchNorm in training mode: drop it.
    lone_last = len(sampler) % batch == 1 and len(sampler) > 1
    train_loader = DataLoader(train_set, sampler=sampler, drop_last=lone_last, **common)
    # Validation: each process scores every world_size-th image, none twice.
    val_indices = range(dist.rank, len(val_set), dist.world_size)
    val_loader = DataLoader(val_set, sampler=val_indices, **common)
    return train_loader, val_loader


def model_args(settings: Settings) -> dict[str, Any]:
    return {"cbam": settings.model.cbam}


@dataclass(frozen=True)
class Machine:
    """How this process computes: device, processes, precision, memory format and loader workers."""

    device: torch.device
    dist: Context
    precision: Precision
    channels_last: bool
    workers: int

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def prepare_machine(settings: Settings, device: torch.device, dist: Context) -> Machine:
    """Resolve the machine-dependent settings, and set the process-wide state that goes with them
    (allocator behaviour, cuDNN autotuning)."""
    t = settings.train
    allocator.keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: find the fastest convolutions once
    precision = Precision.resolve(t.precision, device)
    if precision.emulated:
        warn(f"bf16 is emulated on this {device.type.upper()} (no native bf16): expect it slower than fp32")
    elif precision.name == "bf16" and not precision.fast_bf16:
        warn(f"this {device.type.upper()} has bf16 instructions but no bf16 matrix units (AMX): expect bf16 no faster than fp32")
    return Machine(
        device=device,
        dist=dist,
        precision=precision,
        channels_last=choose_channels_last(t.channels_last, device.type, precision.name),
        workers=choose_workers(t.workers, usable_cores(), device.type, dist.local_world_size),
    )


class Trainer:
    """Holds the state that last.pth saves; ``run`` trains from ``start_epoch`` to the configured end."""

    def __init__(
        self, settings: Settings, run_dir: Path, machine: Machine, splits: dict[str, LoadedSplit], pretrained: bool = True
    ) -> None:
        """``pretrained``: load the encoder weights the settings name (a resumed run restores its own)."""
        self.settings, self.run_dir, self.machine, self.splits = settings, run_dir, machine, splits
        self.device, self.dist, self.precision = machine.device, machine.dist, machine.precision
        self.memory_format = machine.memory_format
        t = settings.train

        # The model, and the network the steps run: wrapped for several processes (compiled by
        # compile_model). Validation runs the model itself, which needs no other process.
        torch.manual_seed(t.seed)
        self.model = build_model(settings.model.name, cbam=settings.model.cbam)
        self.encoder = encoder_of(settings.model.name, self.model)
        if pretrained and settings.model.encoder_weights != "none":
            from .encoder_weights import load_encoder_weights

            info(load_encoder_weights(self.encoder, settings.model.encoder_weights, settings.download))
        self.model.to(self.device, memory_format=self.memory_format)
        self.parameters = count_parameters(self.model)
        self.train_net = self.dist.wrap(self.model, self.device)
        self.eval_net = self.model
        self.compiled = CompileDecision(False, "not decided yet")  # compile_model decides, once the run's epochs are known
        self._compiled_calls: set[str] = set()

        # The optimiser and the loss.
        self.optimizer = build_optimizer(self.model.parameters(), t, self.device.type)
        self.scaler = self.precision.grad_scaler()
        self.loss_fn = build_loss(t.loss)
        # An exponential moving average of the weights (and BatchNorm statistics): validated and saved
        # as best.pth instead of the raw weights.
        self.ema = None
        if t.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
            self.eval_net = self.ema.module

        # The data, and the schedule (the per-batch ones count batches).
        self.train_loader, self.val_loader = make_loaders(settings, splits, machine.workers, self.device, self.dist)
        self.scheduler = build_scheduler(self.optimizer, t, len(self.train_loader))
        self.per_batch_schedule = t.scheduler in PER_BATCH

        # What the loop accumulates (and last.pth restores).
        self.epochs: list[dict[str, Any]] = []
        self.best_epoch, self.best_val_dice, self.bad_epochs = 0, -1.0, 0

    def compile_model(self, start_epoch: int) -> CompileDecision:
        """Decide --compile (auto: from this machine and the steps left to train) and compile if so.
        The weights stay in ``self.model``: checkpoints never see torch.compile's wrapper."""
        t = self.settings.train
        cpu = self.device.type == "cpu"
        steps = planned_steps(t.epochs - start_epoch, len(self.train_loader))
        self.compiled = decide_compile(
            t.compile, self.device.type, self.precision.name, self.precision.fast_bf16, steps,
            cxx_compiler=has_cxx_compiler() if cpu else True,
        )
        if self.compiled.enabled:
            use_petseg_cache()
            self.train_net = torch.compile(self.train_net)
            if self.ema is not None:  # validation runs the averaged weights
                self.eval_net = torch.compile(self.ema.module)
            else:
                self.eval_net = self.train_net if not self.dist.enabled else torch.compile(self.model)
        return self.compiled

    def first_compiled_call(self, what: str) -> ContextManager[None]:
        """Announces (and times) the call that compiles ``what``; nothing for an eager model or later calls."""
        if not self.compiled.enabled or what in self._compiled_calls:
            return nullcontext()
        self._compiled_calls.add(what)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda: None
        return announce_compilation(what, info, sync)

    # -- checkpoints ------------------------------------------------------------------------------
    def _weights(self) -> dict[str, Any]:
        """What best.pth holds: the weights validation scored (the EMA's when there is one)."""
        return {
            "model": self.settings.model.name,
            "model_args": model_args(self.settings),
            "image_size": self.settings.data.image_size,
            "state_dict": (self.ema.module if self.ema is not None else self.model).state_dict(),
        }

    def save_last(self, epoch: int, optimizer_state: bool = True) -> None:
        """last.pth: the weights and, unless ``optimizer_state`` is False (a finished run that need not
        be resumed), everything a resume needs."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        } if optimizer_state else {"optimizer": None, "optimizer_dropped": True}
        runs.save_checkpoint(
            self.run_dir / runs.LAST,
            {
                **self._weights(),
                "state_dict": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "epoch": epoch,
                **state,
                "early_stopping": {
                    "best_epoch": self.best_epoch,
                    "best_val_dice": self.best_val_dice,
                    "bad_epochs": self.bad_epochs,
                },
                "rng": {"torch": torch.get_rng_state()},
                "history": self.epochs,  # resume takes the records from here: they match the weights
            },
        )

    def restore(self) -> int:
        """Load last.pth (weights, optimiser, early stopping, epoch records); returns the last finished epoch."""
        last = runs.load_checkpoint(self.run_dir / runs.LAST)
        if last.get("optimizer") is None:
            raise PetsegError(optimizer_dropped_message(self.run_dir), exit_code=2)
        self.model.load_state_dict(last["state_dict"])
        self.optimizer.load_state_dict(last["optimizer"])
        self.scheduler.load_state_dict(last["scheduler"])
        if self.ema is not None and last.get("ema"):
            self.ema.load_state_dict(last["ema"])
        if last.get("scaler"):
            self.scaler.load_state_dict(last["scaler"])
        stopping = last["early_stopping"]
        self.best_epoch, self.best_val_dice = stopping["best_epoch"], stopping["best_val_dice"]
        self.bad_epochs = stopping["bad_epochs"]
        torch.set_rng_state(last["rng"]["torch"])
        self.epochs = list(last["history"])
        return int(last["epoch"])

    def summary(self, stop_reason: str, optimizer_kept: bool = True) -> dict[str, Any]:
        return {
            "optimizer_kept": optimizer_kept,
            "best_epoch": self.best_epoch,
            "best_val_dice": self.best_val_dice if self.best_epoch else None,
            "total_seconds": round(sum(e["seconds"] for e in self.epochs), 3),
            "stop_reason": stop_reason,
            "epochs_run": len(self.epochs),
            "parameters": self.parameters,
        }

    # -- one epoch --------------------------------------------------------------------------------
    def to_device(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batches cross to the device (asynchronously from pinned memory), then become floats."""
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return normalize(images, self.settings.data.normalization), masks.to(self.device, non_blocking=True)

    def check(self, stop: threading.Event, loss_sum: torch.Tensor, seen: int, propose: int) -> tuple[float, float, bool, int]:
        """Read this epoch's loss so far and whether any process was asked to stop, in one collective
        (every process calls it at the same batch); returns (loss sum, images, stop, next interval) over
        all processes, the interval being the first process's ``propose``."""
        mine = [loss_sum.item(), float(seen), float(stop.is_set()), float(propose if self.dist.is_main else 0)]
        total, count, stops, every = self.dist.sum(mine, self.device)
        return total, count, bool(stops), int(every)

    def train_epoch(
        self, stop: threading.Event, description: str, eta: "RunClock", freeze_encoder: bool = False
    ) -> tuple[float, int]:
        """Mean training loss and the number of images seen (by all processes); raises Interrupted or
        Diverged. With ``freeze_encoder`` only the decoder learns (the encoder's BatchNorm statistics
        stay as they are too).

        The loss is summed on the device: reading it every step would make the host wait for the device
        at every step. It is read about every CHECK_SECONDS (to notice a loss that is no longer finite,
        and for all processes to agree on a stop) and at the end of the epoch. A single process also
        looks at ``stop`` before every batch, which costs nothing."""
        from tqdm import tqdm

        self.train_net.train()
        frozen = list(self.encoder.parameters()) if freeze_encoder and self.encoder is not None else []
        if frozen:
            self.encoder.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # this process's sum of loss x images
        mine, every, next_check = 0, 1, 1  # images seen here; steps between checks; the batch of the next one
        total_loss, seen, start = 0.0, 0.0, time.perf_counter()
        since = start
        quiet = None if self.dist.is_main else True  # None: a bar only on a terminal
        with tqdm(self.train_loader, desc=description, leave=False, unit="batch", disable=quiet) as bar:
            for batch, (images, masks) in enumerate(bar, start=1):
                if stop.is_set() and not self.dist.enabled:
                    raise Interrupted
                with self.first_compiled_call("training step"):
                    images, masks = self.to_device(images, masks)
                    with self.precision.autocast():
                        loss = self.loss_fn(self.train_net(images), masks)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    for parameter in frozen:
                        parameter.grad = None  # the optimiser skips a parameter without a gradient
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    if self.per_batch_schedule:
                        self.scheduler.step()
                    if self.ema is not None:
                        self.ema.update_parameters(self.model)
                loss_sum += loss.detach().double() * len(images)
                mine += len(images)
                if batch == next_check:
                    now = time.perf_counter()
                    propose = min(max(int(every * CHECK_SECONDS / max(now - since, 1e-6)), 1), MAX_CHECK_EVERY)
                    total_loss, seen, stops, every = self.check(stop, loss_sum, mine, propose)
                    since, next_check = time.perf_counter(), batch + every  # after the read: the device is idle
                    if stops:
                        raise Interrupted
                    if not math.isfinite(total_loss):
                        raise Diverged(f"training loss became {total_loss / seen} by batch {batch}")
                    bar.set_postfix(
                        loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (now - start):.1f}",
                        run_left=eta.left_during_training(batch / len(self.train_loader), now - start),
                    )
        total_loss, seen, stops, _ = self.check(stop, loss_sum, mine, every)
        if stops:
            raise Interrupted
        if not math.isfinite(total_loss):
            raise Diverged(f"training loss became {total_loss / max(seen, 1)} in the last batches of the epoch")
        return total_loss / max(seen, 1), int(seen)

    @torch.inference_mode()
    def validate(self, stop: threading.Event, description: str) -> tuple[float, float, str | None]:
        """Mean validation loss, mean per-image foreground Dice over every process's share, and a warning
        when the model is degenerate; raises Interrupted (one process only: several finish together).
        The sums stay on the device and are read once, at the end."""
        from tqdm import tqdm

        from .metrics import degenerate_warning

        self.dist.broadcast_buffers(self.model)
        self.eval_net.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss x images, Dice, pet predicted, pet true
        seen, pixels = 0, 0
        quiet = None if self.dist.is_main else True
        for images, masks in tqdm(self.val_loader, desc=description, leave=False, unit="batch", disable=quiet):
            if stop.is_set() and not self.dist.enabled:
                raise Interrupted
            images, masks = self.to_device(images, masks)
            with self.first_compiled_call("validation step"), self.precision.autocast():
                logits = self.eval_net(images)
                sums[0] += self.loss_fn(logits, masks).double() * len(images)
            prediction = logits.argmax(1)
            sums[1] += dice_per_image(prediction, masks).sum().double()
            sums[2] += (prediction != 0).sum()
            sums[3] += (masks != 0).sum()
            seen += len(images)
            pixels += masks.numel()
        total_loss, dice_sum, predicted, truth, seen, pixels = self.dist.sum(
            [*sums.tolist(), float(seen), float(pixels)], self.device
        )
        pixels = max(pixels, 1.0)
        return total_loss / max(seen, 1), dice_sum / max(seen, 1), degenerate_warning(predicted / pixels, truth / pixels)

    def estimate_step_seconds(self) -> float | None:
        """Seconds of one training step (forward and backward on a batch of random images), timed before
        the first epoch; nothing of the model, its statistics or the random state changes. None with
        a compiled model (its first step compiles, which says nothing of the others)."""
        if self.compiled.enabled:
            return None
        import copy

        size, batch = self.settings.data.image_size, self.dist.per_rank_batch(self.settings.train.batch_size)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 3, size, size, generator=generator).to(self.device, memory_format=self.memory_format)
        masks = torch.randint(0, 2, (batch, size, size), generator=generator).to(self.device)
        buffers = copy.deepcopy(dict(self.model.named_buffers()))  # BatchNorm statistics
        self.model.train()
        seconds = []
        for _ in range(2):  # the first step allocates and warms up: time the second
            started = time.perf_counter()
            with self.precision.autocast():
                loss = self.loss_fn(self.model(images), masks)
            loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds.append(time.perf_counter() - started)
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                buffer.copy_(buffers[name])
        return seconds[-1]

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, start_epoch: int, stop: threading.Event, signals: StopSignals, clock: "RunClock") -> str:
        t = self.settings.train
        main = self.dist.is_main  # only the first process writes the run directory and prints
        for epoch in range(start_epoch + 1, t.epochs + 1):
            self.train_loader.sampler.set_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            try:
                freeze = epoch <= t.freeze_encoder_epochs
                train_loss, seen = self.train_epoch(stop, f"epoch {epoch}/{t.epochs}", clock, freeze)
                train_seconds = time.perf_counter() - started
                val_loss, val_dice, degenerate = self.validate(stop, f"validating epoch {epoch}/{t.epochs}")
            except Interrupted:
                return INTERRUPTED
            except Diverged as exc:
                warn(f"{exc}: training diverged; the best weights so far are kept in {self.run_dir / runs.BEST}")
                return DIVERGED
            if not math.isfinite(val_loss):
                warn(f"validation loss became {val_loss}: training diverged; best weights kept")
                return DIVERGED
            seconds = time.perf_counter() - started
            if not self.per_batch_schedule:
                self.scheduler.step(val_dice)
            before = self.best_epoch, self.best_val_dice, self.bad_epochs
            improved = val_dice > self.best_val_dice
            if improved:
                self.best_epoch, self.best_val_dice, self.bad_epochs = epoch, val_dice, 0
            else:
                self.bad_epochs += 1
            self.epochs.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_dice": val_dice,
                    "lr": lr,
                    "seconds": round(seconds, 3),
                    "images_per_s": round(seen / train_seconds, 3),
                }
            )
            try:
                with signals.saving(epoch):  # a second Ctrl-C waits for these files to be whole
                    if main:
                        if improved:
                            runs.save_checkpoint(
                                self.run_dir / runs.BEST, {**self._weights(), "epoch": epoch, "val_dice": val_dice}
                            )
                        self.save_last(epoch)
                        runs.write_history(self.run_dir, self.epochs, None)
            except Interrupted:  # stopped before this epoch's files were begun: the run keeps the one before
                self.epochs.pop()
                self.best_epoch, self.best_val_dice, self.bad_epochs = before
                return INTERRUPTED
            clock.epoch_done(seconds)
            out.print(
                f"epoch {epoch:>3}/{t.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                f"val_dice {val_dice:.4f}  lr {lr:.2e}  {seconds:.1f} s"
                + (f"  (run: {clock.left()} left)" if epoch < t.epochs else "")
                + ("  [bold green]* best[/]" if improved else ""),
                soft_wrap=True,
            )
            if degenerate:
                warn(f"epoch {epoch}: {degenerate}")
            if self.bad_epochs >= t.patience:
                info(f"early stop: validation Dice has not improved for {t.patience} epochs")
                return EARLY_STOP
        return COMPLETED


class RunClock:
    """The time left for the whole run: from a timed step before the first epoch, then from the epochs."""

    def __init__(self, epochs_left: int, estimated_epoch_seconds: float | None) -> None:
        self.epochs_left = epochs_left
        self.epoch_seconds = estimated_epoch_seconds
        self.finished: list[float] = []

    def epoch_done(self, seconds: float) -> None:
        self.finished.append(seconds)
        self.epochs_left -= 1
        self.epoch_seconds = sum(self.finished) / len(self.finished)

    def left(self) -> str:
        return "?" if self.epoch_seconds is None else duration(self.epochs_left * self.epoch_seconds)

    def left_during_training(self, done: float, elapsed: float) -> str:
        """Left for the run, ``done`` (0-1) of the current epoch's training having taken ``elapsed`` s."""
        if self.epoch_seconds is None:
            return "?"
        in_epoch = max(self.epoch_seconds - elapsed, 0.0) if self.finished else self.epoch_seconds * (1 - done)
        return duration(in_epoch + (self.epochs_left - 1) * self.epoch_seconds)


def estimate_epoch_seconds(trainer: Trainer) -> float | None:
    """One epoch's training and validation, from one timed step (validation: a forward pass, about a third)."""
    step = trainer.estimate_step_seconds()
    if step is None:
        return None
    return step * (len(trainer.train_loader) + len(trainer.val_loader) / 3)


def optimizer_dropped_message(run_dir: Path) -> str:
    return (
        f"{run_dir} cannot be resumed: its optimiser state was dropped from {runs.LAST} when it finished "
        f"(train with --keep-optimizer to keep it); start a new run instead"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_facts(trainer: Trainer, data_dir: Path) -> dict[str, Any]:
    """config.toml's [run]: what this run was, including what the "auto" settings resolved to."""
    return {
        "petseg_version": __version__,
        "torch_version": torch.__version__,
        "device": str(trainer.device),
        "start_time": _now(),
        "dataset_path": str(data_dir.resolve()),
        "images": {name: len(split) for name, split in trainer.splits.items()},
        "skipped": {name: split.skipped for name, split in trainer.splits.items()},
        "parameters": trainer.parameters,
        **speed_facts(trainer),
    }


def speed_facts(trainer: Trainer) -> dict[str, Any]:
    """The choices made from this machine; a resumed run records them again (another machine may differ)."""
    machine = trainer.machine
    return {
        "precision": machine.precision.name,
        "channels_last": machine.channels_last,
        "workers": machine.workers,
        "processes": machine.dist.world_size,
        "allocator": allocator.describe(),
        "compile": trainer.compiled.enabled,
        "compile_reason": trainer.compiled.reason,
    }


# What a resumed run may change: how long it trains and how the machine computes it. Everything else
# (model, data, sizes, seed, augmentation, optimisation) would mix two experiments in one history.
RESUMABLE_SETTINGS = frozenset(
    {
        ("train", "epochs"),
        ("train", "patience"),
        ("train", "device"),
        ("train", "workers"),
        ("train", "precision"),
        ("train", "channels_last"),
        ("train", "compile"),
        ("train", "keep_optimizer"),
        ("data", "cache"),
        ("data", "data_dir"),  # the same dataset, where this machine keeps it
    }
)


def check_resume_overrides(
    run_dir: Path, run_settings: Settings, given: dict[str, dict[str, Any]], flag_names: dict[tuple[str, str], str]
) -> None:
    """Refuse a flag given with ``--resume`` that would change the experiment (one the run already has is fine)."""
    for section, values in given.items():
        for key, value in values.items():
            if value is None or (section, key) in RESUMABLE_SETTINGS:
                continue
            run_value = getattr(getattr(run_settings, section), key)
            if value == run_value:
                continue
            flag = flag_names.get((section, key), f"--{key.replace('_', '-')}")
            raise UsageError(
                f"{flag} cannot change when resuming: {run_dir} was trained with {section}.{key} = "
                f"{run_value!r}; start a new run for {value!r} (with --resume only "
                f"{', '.join(sorted(flag_names.get(k, '--' + k[1].replace('_', '-')) for k in RESUMABLE_SETTINGS))} may change)"
            )


def check_resumable(run_dir: Path, settings: Settings) -> None:
    """Refuse a directory that is no run, or a run that would stop again at once, saying what would
    make it train longer."""
    run_settings = runs.read_config(run_dir)[0]
    history = runs.read_history(run_dir)
    done = max((e["epoch"] for e in history["epochs"]), default=0)
    summary = history.get("summary") or {}
    reason = summary.get("stop_reason")
    if summary.get("optimizer_kept") is False:  # nothing can make it train on: say that first
        raise PetsegError(optimizer_dropped_message(run_dir), exit_code=2)
    patience = run_settings.train.patience
    if reason == EARLY_STOP and settings.train.patience <= patience:
        raise PetsegError(
            f"{run_dir} stopped early after epoch {done} (val Dice did not improve for {patience} epochs); "
            f"to train it longer, resume with --patience larger than {patience}",
            exit_code=2,
        )
    if done >= settings.train.epochs:
        raise PetsegError(
            f"{run_dir} already finished ({reason or COMPLETED} after epoch {done}); "
            f"to train it longer, resume with --epochs larger than {done}",
            exit_code=2,
        )


def train(
    settings: Settings,
    name: str | None = None,
    resume: Path | None = None,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train into a new run directory, or continue ``resume`` (then ``settings`` are the run's own
    config.toml overlaid with the command line's flags; see ``settings.load_settings``).

    Under torchrun every process calls this; they train together and the first one writes and prints."""
    dist = Context.from_env()
    if not dist.is_main:
        out.quiet = err.quiet = True
    stop = stop or threading.Event()
    settings = validate(settings)
    if settings.train.compile is not False:
        use_petseg_cache()  # before anything imports torch._dynamo, which would fix its own default
    if resume is not None:
        check_resumable(resume, settings)
    elif name is not None:
        runs.check_new_run_name(Path(settings.train.runs_dir), name)  # before minutes of data loading
    device = dist.device(resolve_device(settings.train.device))
    dist.start(device)
    try:
        return _train(settings, device, dist, name, resume, stop)
    finally:
        dist.stop()


def open_run(settings: Settings, name: str | None, resume: Path | None, dist: Context) -> Path:
    """The run directory: ``resume``, or a new one under ``runs_dir`` (made by the first process, its
    name shared with the others)."""
    if resume is not None:
        return resume
    run_dir = None
    if dist.is_main:
        base = name or runs.default_run_name(settings.model.name, settings.train.batch_size, settings.model.cbam)
        run_dir = runs.create_run_dir(Path(settings.train.runs_dir), base, explicit=name is not None)
    return Path(dist.broadcast_object(str(run_dir) if run_dir else None))


def _train(
    settings: Settings,
    device: torch.device,
    dist: Context,
    name: str | None,
    resume: Path | None,
    stop: threading.Event,
) -> TrainResult:
    main = dist.is_main  # only the first process writes the run directory and prints
    data_dir = Path(settings.data.data_dir)
    runs_dir_existed = Path(settings.train.runs_dir).is_dir()
    # 1. The run, 2. the machine, the data and the model, 3. the loop.
    run_dir = open_run(settings, name, resume, dist)
    try:
        machine = prepare_machine(settings, device, dist)
        trainer = Trainer(settings, run_dir, machine, load_data(settings, data_dir), pretrained=resume is None)
        if resume is None:
            trainer.compile_model(start_epoch=0)  # a resumed run decides once it knows the epochs left
    except BaseException:
        if resume is None and main:  # a data error (or Ctrl-C while loading) leaves no empty run behind
            runs.discard_new_run_dir(run_dir, remove_parent=not runs_dir_existed)
        raise

    signals = StopSignals(stop)  # from here on, Ctrl-C stops training with the run's files whole
    with signals.installed():
        start_epoch = _start(trainer, settings, data_dir, resume)
        signals.saved_epoch = start_epoch
        return _run_epochs(trainer, run_dir, start_epoch, stop, signals)


def _start(trainer: Trainer, settings: Settings, data_dir: Path, resume: Path | None) -> int:
    """Write a new run's first files, or restore ``resume`` into ``trainer``; the last finished epoch."""
    main, run_dir = trainer.dist.is_main, trainer.run_dir
    if resume is not None:
        if main:
            files.remove_temporary_files(run_dir)  # what a killed save left behind
        # Killed before its first epoch finished: there is nothing to restore, start it over.
        start_epoch = trainer.restore() if (run_dir / runs.LAST).is_file() else 0
        trainer.compile_model(start_epoch)
        if main:
            facts = {**runs.read_config(run_dir)[1], **speed_facts(trainer), "resumed_at": _now()}
            runs.write_config(run_dir, settings, facts)
        if start_epoch:
            info(f"resuming {run_dir} after epoch {start_epoch}")
        else:
            info(f"no epoch of {run_dir} had finished: training it from the beginning")
    else:
        start_epoch = 0
        if main:
            runs.write_config(run_dir, settings, run_facts(trainer, data_dir))
            runs.write_history(run_dir, [], None)
    return start_epoch


def _run_epochs(trainer: Trainer, run_dir: Path, start_epoch: int, stop: threading.Event, signals: StopSignals) -> TrainResult:
    settings, dist, device, main = trainer.settings, trainer.dist, trainer.device, trainer.dist.is_main
    t, s = settings.train, trainer.splits
    processes = f" in {dist.world_size} processes" if dist.enabled else ""
    info(
        f"training {settings.model.name} ({trainer.parameters:,} parameters) on {device}{processes} into {run_dir}: "
        f"{len(s['train'])} train / {len(s['val'])} val images at {settings.data.image_size}px, batch {t.batch_size}, "
        f"{trainer.precision.name}{', compiled' if trainer.compiled.enabled else ''}"
    )
    epochs_left = t.epochs - start_epoch
    epoch_seconds = estimate_epoch_seconds(trainer)
    if epoch_seconds is not None:
        info(
            f"estimated time: {duration(epoch_seconds)} per epoch, {duration(epoch_seconds * epochs_left)} for "
            f"{epochs_left} epoch{'s' * (epochs_left != 1)} (less if it stops early; from one timed step)"
        )
    clock = RunClock(epochs_left, epoch_seconds)
    try:
        stop_reason = trainer.run(start_epoch, stop, signals, clock)
    except KeyboardInterrupt:  # a second signal: the files describe the last saved epoch
        stop_reason = INTERRUPTED
    finished = stop_reason in (COMPLETED, EARLY_STOP)
    keep_optimizer = t.keep_optimizer or not finished
    try:
        with signals.saving(signals.saved_epoch):
            if main:
                if not keep_optimizer and trainer.epochs:
                    trainer.save_last(trainer.epochs[-1]["epoch"], optimizer_state=False)
                runs.write_history(run_dir, trainer.epochs, trainer.summary(stop_reason, keep_optimizer))
    except KeyboardInterrupt:  # a signal while the last files were written: they are whole, the run is as said
        pass
    if stop_reason == INTERRUPTED:
        if signals.saved_epoch:
            info(f"interrupted: the run keeps epoch {signals.saved_epoch}; continue with  petseg train --resume {run_dir}")
        else:
            info(f"interrupted before the first epoch finished: no weights kept; start it over with  petseg train --resume {run_dir}")
    else:
        best = f"{trainer.best_val_dice:.4f} at epoch {trainer.best_epoch}" if trainer.best_epoch else "none"
        info(f"{stop_reason}: best val_dice {best}; run saved in {run_dir}")
        if not keep_optimizer:
            info(f"{runs.LAST} now holds the weights only (no optimiser state): the run cannot be resumed (--keep-optimizer keeps it)")
    return TrainResult(run_dir, stop_reason, trainer.best_epoch, trainer.best_val_dice)
