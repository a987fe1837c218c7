"""The training loop, top to bottom: a step, an epoch of steps, validation, and the run's epochs (each
recorded, saved whole, printed)."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import replace
from typing import Any

import torch

from ..base.console import info, out, print_fitted, warn
from ..run import BEST, write_history
from ..base.formatting import duration
from ..predict.metrics import dice_per_image
from ..run.trackers import Trackers
from .bar import bar_options, postfix
from .clock import RunClock
from .progress import Progress
from .result import COMPLETED, DIVERGED, EARLY_STOP, INTERRUPTED, TIME_UP, Diverged, Interrupted
from .samples import sample_overlays
from .saving import save_best, save_last
from .setup import Training
from .signals import StopSignals
from .sizes import Resizing

# Reading the loss on the host waits for the device to finish every step queued so far. The loop reads
# it (and, across processes, agrees on a stop) about every CHECK_SECONDS, at most every MAX_CHECK_EVERY steps.
CHECK_SECONDS = 2.0
MAX_CHECK_EVERY = 64


def train_step(training: Training, images: torch.Tensor, masks: torch.Tensor, frozen: list[torch.nn.Parameter]) -> torch.Tensor:
    """One optimiser step on a batch (``frozen`` parameters do not learn); the batch's mean loss, on the device."""
    images, masks = training.to_device(images, masks)

    def forward_backward() -> torch.Tensor:  # again inside the step, for an optimiser that asks (SAM)
        with training.precision.autocast():
            loss = training.loss_fn(training.train_net(images), masks)
        training.optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss).backward()
        for parameter in frozen:
            parameter.grad = None  # the optimiser skips a parameter without a gradient
        return loss

    loss = forward_backward()
    training.scaler.step(training.optimizer, *([forward_backward] if training.settings.train.sam_rho else []))
    training.scaler.update()
    if training.per_batch_schedule:
        training.scheduler.step()
    if training.ema is not None:
        training.ema.update(training.model)
    return loss


def check(
    training: Training, stop: threading.Event, loss_sum: torch.Tensor, seen: int, propose: int, plan: int = 0
) -> tuple[float, float, bool, int]:
    """Read this epoch's loss so far and whether any process was asked to stop, in one collective
    (every process calls it at the same batch); returns (loss sum, images, stop, next interval) over
    all processes, the interval being the first process's ``propose``. With a time budget, the first
    process's ``plan`` (the epochs that fit) becomes every process's schedule horizon."""
    dist = training.dist
    mine = [loss_sum.item(), float(seen), float(stop.is_set()), float(propose if dist.is_main else 0), float(plan if dist.is_main else 0)]
    total, count, stops, every, planned = dist.sum(mine, training.device)
    if planned:
        training.horizon.epochs = int(planned)
    return total, count, bool(stops), int(every)


def train_epoch(
    training: Training, stop: threading.Event, description: str, clock: RunClock | None = None, freeze_encoder: bool = False,
    done: int = 0,
) -> tuple[float, int]:
    """Mean training loss and the number of images seen (by all processes); raises Interrupted or
    Diverged. With ``freeze_encoder`` only the decoder learns (the encoder's BatchNorm statistics
    stay as they are too). With a time budget, the epochs that fit are re-planned at every check
    (``done`` epochs having finished before this one), so the schedule ends when the time does.

    The loss is summed on the device: reading it every step would make the host wait for the device
    at every step. It is read about every CHECK_SECONDS (to notice a loss that is no longer finite,
    and for all processes to agree on a stop) and at the end of the epoch. A single process also
    looks at ``stop`` before every batch, which costs nothing."""
    from tqdm import tqdm

    training.train_net.train()
    frozen = list(training.encoder.parameters()) if freeze_encoder and training.encoder is not None else []
    if frozen:
        training.encoder.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=training.device)  # this process's sum of loss x images
    mine, every, next_check = 0, 1, 1  # images seen here; steps between checks; the batch of the next one
    total_loss, seen, start = 0.0, 0.0, time.perf_counter()
    since, steps = start, len(training.train_loader)
    quiet = None if training.dist.is_main else True  # None: a bar only on a terminal
    with tqdm(training.train_loader, **bar_options(description, quiet)) as bar:
        for batch, (images, masks) in enumerate(bar, start=1):
            if stop.is_set() and not training.dist.enabled:
                raise Interrupted
            with training.first_compiled_call("training step", images.shape[-1]):
                loss = train_step(training, images, masks, frozen)
            loss_sum += loss.detach().double() * len(images)
            mine += len(images)
            if batch == next_check:
                now = time.perf_counter()
                propose = min(max(int(every * CHECK_SECONDS / max(now - since, 1e-6)), 1), MAX_CHECK_EVERY)
                plan = clock.plan(done, training.settings.train.epochs, batch / steps) if clock and clock.budget else 0
                total_loss, seen, stops, every = check(training, stop, loss_sum, mine, propose, plan)
                since, next_check = time.perf_counter(), batch + every  # after the read: the device is idle
                if stops:
                    raise Interrupted
                if not math.isfinite(total_loss):
                    raise Diverged(f"training loss became {total_loss / seen} by batch {batch}")
                left = clock.left_during_training(batch / steps, now - start) if clock else "?"
                bar.set_postfix_str(postfix(left, total_loss / seen, seen / (now - start)), refresh=False)
    total_loss, seen, stops, _ = check(training, stop, loss_sum, mine, every)
    if stops:
        raise Interrupted
    if not math.isfinite(total_loss):
        raise Diverged(f"training loss became {total_loss / max(seen, 1)} in the last batches of the epoch")
    return total_loss / max(seen, 1), int(seen)


@torch.inference_mode()
def validate(training: Training, stop: threading.Event, description: str) -> tuple[float, float, str | None]:
    """Mean validation loss, mean per-image foreground Dice over every process's share, and a warning
    when the model is degenerate; raises Interrupted (one process only: several finish together).
    The sums stay on the device and are read once, at the end."""
    from tqdm import tqdm

    from ..predict.metrics import degenerate_warning

    training.sync_buffers()
    net = training.eval_net
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=training.device)  # loss x images, Dice, pet predicted, pet true
    seen, pixels = 0, 0
    quiet = None if training.dist.is_main else True
    for images, masks in tqdm(training.val_loader, desc=description, leave=False, unit="batch", disable=quiet):
        if stop.is_set() and not training.dist.enabled:
            raise Interrupted
        images, masks = training.to_device(images, masks)
        with training.first_compiled_call("validation step"), training.precision.autocast():
            logits = net(images)
            sums[0] += training.loss_fn(logits, masks).double() * len(images)
        prediction = logits.argmax(1)
        sums[1] += dice_per_image(prediction, masks).sum().double()
        sums[2] += (prediction != 0).sum()
        sums[3] += (masks != 0).sum()
        seen += len(images)
        pixels += masks.numel()
    total_loss, dice_sum, predicted, truth, seen, pixels = training.dist.sum(
        [*sums.tolist(), float(seen), float(pixels)], training.device
    )
    pixels = max(pixels, 1.0)
    return total_loss / max(seen, 1), dice_sum / max(seen, 1), degenerate_warning(predicted / pixels, truth / pixels)


def one_epoch(
    training: Training, epoch: int, stop: threading.Event, clock: RunClock, resizing: Resizing | None = None
) -> tuple[dict[str, Any], str | None]:
    """Train and validate epoch ``epoch`` (at its size, with ``resizing``): its history record and a
    warning when the model is degenerate; raises Interrupted or Diverged."""
    t = training.settings.train
    size = resizing.start(epoch) if resizing is not None else training.settings.data.image_size
    training.train_loader.sampler.set_epoch(epoch)
    lr = training.optimizer.param_groups[0]["lr"]
    started, compiling = time.perf_counter(), training.compile_seconds
    train_loss, seen = train_epoch(
        training, stop, f"epoch {epoch}/{training.horizon.epochs}", clock, epoch <= t.freeze_encoder_epochs, epoch - 1
    )
    train_seconds = time.perf_counter() - started
    if resizing is not None and resizing.reestimates(epoch, training.horizon.epochs):
        resizing.reestimate(epoch)
    val_loss, val_dice, degenerate = validate(training, stop, f"validating epoch {epoch}/{training.horizon.epochs}")
    if not math.isfinite(val_loss):
        raise Diverged(f"validation loss became {val_loss}")
    seconds = time.perf_counter() - started
    record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_dice": val_dice,
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / train_seconds, 3),
        "train_size": size,
    }
    if training.compile_seconds > compiling:  # this epoch's one-off compilations, which its pace leaves out
        record["compile_seconds"] = round(training.compile_seconds - compiling, 3)
    return record, degenerate


def run_epochs(
    training: Training, progress: Progress, start_epoch: int, stop: threading.Event, signals: StopSignals, clock: RunClock,
    trackers: Trackers | None = None, resizing: Resizing | None = None,
) -> str:
    """Train from ``start_epoch`` to the configured end (each epoch at its size, with ``resizing``),
    saving every epoch whole (then logging it to ``trackers``); the stop reason."""
    t = training.settings.train
    for epoch in range(start_epoch + 1, t.epochs + 1):
        # A budget's plan: made as the run was announced (train/command.py), then after every epoch.
        if clock.budget and epoch > training.horizon.epochs:
            info(f"time is up: {duration(clock.used())} of the {duration(clock.budget)} budget used, too little left for epoch {epoch}")
            return TIME_UP
        try:
            record, degenerate = one_epoch(training, epoch, stop, clock, resizing)
        except Interrupted:
            return INTERRUPTED
        except Diverged as exc:
            warn(f"{exc}: training diverged; the best weights so far are kept in {training.run_dir / BEST}")
            return DIVERGED
        if not training.per_batch_schedule:
            training.scheduler.step(record["val_dice"])
        if clock.budget:
            record["time_used"] = round(clock.used(), 3)
        before = replace(progress, epochs=list(progress.epochs))
        improved = progress.record(record)
        try:
            with signals.saving(epoch):  # a second Ctrl-C waits for these files to be whole
                if training.dist.is_main:
                    if improved:
                        save_best(training, epoch, record["val_dice"])
                    save_last(training, progress, epoch)
                    write_history(training.run_dir, progress.epochs, None)
        except Interrupted:  # stopped before this epoch's files were begun: the run keeps the one before
            progress.rewind(before)
            return INTERRUPTED
        if trackers is not None:  # after the files: a tracker never holds an epoch the run does not
            trackers.log_epoch(record, samples=lambda: sample_overlays(training))
        clock.epoch_done(record["seconds"], clock.cost(epoch, training.horizon.epochs) if clock.cost else 1.0)
        if clock.budget:
            plan_epochs(training, clock, epoch)
        print_epoch(record, training.horizon.epochs, clock, improved, resizing is not None)  # the planned last epoch
        if degenerate:
            warn(f"epoch {epoch}: {degenerate}")
        if progress.stops_early(t.patience):
            info(f"early stop: validation Dice has not improved for {t.patience} epochs")
            return EARLY_STOP
    return COMPLETED


def plan_epochs(training: Training, clock: RunClock, done: int) -> int:
    """The run's last epoch under its time budget, ``done`` having finished: the first process's plan,
    in every process (so all stop together and follow one schedule), which the schedule then ends at."""
    mine = clock.plan(done, training.settings.train.epochs) if training.dist.is_main else 0
    planned = int(training.dist.sum([float(mine)], training.device)[0])
    training.horizon.epochs = planned
    return planned


def print_epoch(record: dict[str, Any], epochs: int, clock: RunClock, improved: bool, sized: bool = False) -> None:
    """The epoch's line (with its training size when ``sized``: a size schedule's), fitted to a terminal."""
    epoch = record["epoch"]
    print_fitted(
        out,
        f"epoch {epoch:>3}/{epochs}" + (f"  {record['train_size']}px" if sized else "")
        + f"  train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
        f"val_dice {record['val_dice']:.4f}  lr {record['lr']:.2e}  {record['seconds']:.1f} s"
        + (f"  (run: {clock.left()} left)" if epoch < epochs else "")
        + ("  * best" if improved else ""),
    )
