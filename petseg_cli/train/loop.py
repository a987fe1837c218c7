"""The training loop, top to bottom: a step, an epoch of steps, validation, and the run's epochs. All else
a training does (the EMA, the time budget, the size schedule, the files, the trackers, the progress bar
and lines, early stopping) it does as callbacks, called at the fixed points callbacks.py lists."""

from __future__ import annotations

import math
import threading
import time

import torch

from ..predict.metrics import degenerate_warning, dice_per_image
from .callbacks import Callbacks, Loop
from .result import COMPLETED, DIVERGED, INTERRUPTED, Diverged, Interrupted
from .setup import TRAINING, VALIDATION, Training

# Reading the loss on the host waits for the device to finish every step queued so far. The loop reads
# it (and, across processes, agrees on a stop) about every CHECK_SECONDS, at most every MAX_CHECK_EVERY steps.
CHECK_SECONDS = 2.0
MAX_CHECK_EVERY = 64

NO_CALLBACKS = Callbacks()


def train_step(training: Training, images: torch.Tensor, masks: torch.Tensor, frozen: list[torch.nn.Parameter]) -> torch.Tensor:
    """One optimiser step on a batch (``frozen`` parameters do not learn); the batch's mean loss, on the device."""
    images, masks = training.to_device(images, masks)

    def forward_backward() -> torch.Tensor:  # again inside the step, for an optimiser that asks (SAM)
        with training.precision.autocast():
            loss = training.loss_fn(training.network(TRAINING, images)(images), masks)
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
    return loss


def check(
    training: Training, stop: threading.Event, loss_sum: torch.Tensor, seen: int, propose: int, plan: int = 0
) -> tuple[float, float, bool, int]:
    """Read this epoch's loss so far and whether any process was asked to stop, in one collective
    (every process calls it at the same batch); returns (loss sum, images, stop, next interval) over
    all processes, the interval being the first process's ``propose``. The first process's ``plan``
    (a time budget's epochs that fit; 0: none) becomes every process's schedule horizon."""
    dist = training.dist
    mine = [loss_sum.item(), float(seen), float(stop.is_set()), float(propose if dist.is_main else 0), float(plan if dist.is_main else 0)]
    total, count, stops, every, planned = dist.sum(mine, training.device)
    if planned:
        training.horizon.epochs = int(planned)
    return total, count, bool(stops), int(every)


def train_epoch(loop: Loop, callbacks: Callbacks = NO_CALLBACKS, freeze_encoder: bool = False) -> tuple[float, int]:
    """Mean training loss and the number of images seen (by all processes); raises Interrupted or
    Diverged. With ``freeze_encoder`` only the decoder learns (the encoder's BatchNorm statistics
    stay as they are too).

    The loss is summed on the device: reading it every step would make the host wait for the device
    at every step. It is read about every CHECK_SECONDS (to notice a loss that is no longer finite,
    and for all processes to agree on a stop) and at the end of the epoch. A single process also
    looks at ``loop.stop`` before every batch, which costs nothing."""
    training, stop = loop.training, loop.stop
    training.train_net.train()
    frozen = list(training.encoder.parameters()) if freeze_encoder and training.encoder is not None else []
    if frozen:
        training.encoder.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=training.device)  # this process's sum of loss x images
    mine, every, next_check = 0, 1, 1  # images seen here; steps between checks; the batch of the next one
    start = time.perf_counter()
    since, loop.steps = start, len(training.train_loader)
    for batch, (images, masks) in enumerate(training.train_loader, start=1):
        if stop.is_set() and not training.dist.enabled:
            raise Interrupted
        with training.first_compiled_call("training step", images.shape[-1]):
            loss = train_step(training, images, masks, frozen)
        loop.batch, loop.checking, loop.fraction, loop.plan = batch, batch == next_check, batch / loop.steps, 0
        callbacks.fire("on_step_end", loop)
        loss_sum += loss.detach().double() * len(images)
        mine += len(images)
        if loop.checking:
            now = time.perf_counter()
            propose = min(max(int(every * CHECK_SECONDS / max(now - since, 1e-6)), 1), MAX_CHECK_EVERY)
            total_loss, seen, stops, every = check(training, stop, loss_sum, mine, propose, loop.plan)
            since, next_check = time.perf_counter(), batch + every  # after the read: the device is idle
            if stops:
                raise Interrupted
            if not math.isfinite(total_loss):
                raise Diverged(f"training loss became {total_loss / seen} by batch {batch}")
            loop.loss, loop.seen, loop.elapsed = total_loss / seen, seen, now - start
            callbacks.fire("on_check", loop)
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

    training.sync_buffers()
    training.eval_net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=training.device)  # loss x images, Dice, pet predicted, pet true
    seen, pixels = 0, 0
    quiet = None if training.dist.is_main else True
    for images, masks in tqdm(training.val_loader, desc=description, leave=False, unit="batch", disable=quiet):
        if stop.is_set() and not training.dist.enabled:
            raise Interrupted
        images, masks = training.to_device(images, masks)
        with training.first_compiled_call("validation step"), training.precision.autocast():
            logits = training.network(VALIDATION, images)(images)
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


def one_epoch(training: Training, epoch: int, loop: Loop, callbacks: Callbacks) -> None:
    """Train and validate epoch ``epoch`` (at ``loop.size``): its history record into ``loop.record``, and
    a warning when the model is degenerate into ``loop.degenerate``; raises Interrupted or Diverged."""
    t = training.settings.train
    training.train_loader.sampler.set_epoch(epoch)
    lr = training.optimizer.param_groups[0]["lr"]
    started, compiling = time.perf_counter(), training.compile_seconds
    train_loss, seen = train_epoch(loop, callbacks, epoch <= t.freeze_encoder_epochs)
    train_seconds = time.perf_counter() - started
    callbacks.fire("on_validation_start", loop)
    val_loss, val_dice, loop.degenerate = validate(training, loop.stop, f"validating epoch {epoch}/{training.horizon.epochs}")
    if not math.isfinite(val_loss):
        raise Diverged(f"validation loss became {val_loss}")
    seconds = time.perf_counter() - started
    loop.record = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_dice": val_dice,
        "lr": lr,
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / train_seconds, 3),
        "train_size": loop.size,
    }
    if training.compile_seconds > compiling:  # this epoch's one-off compilations, which its pace leaves out
        loop.record["compile_seconds"] = round(training.compile_seconds - compiling, 3)


def run_epoch(loop: Loop, epoch: int, callbacks: Callbacks) -> bool:
    """Epoch ``epoch``: trained, validated, recorded and saved; whether the run goes on."""
    training = loop.training
    loop.epoch, loop.size = epoch, training.settings.data.image_size
    if not callbacks.fire("on_epoch_start", loop):
        return False
    try:
        one_epoch(training, epoch, loop, callbacks)
    except Interrupted:
        loop.stop_run(INTERRUPTED)
        return False
    except Diverged as exc:
        loop.stop_run(DIVERGED, str(exc))
        return False
    if not training.per_batch_schedule:
        training.scheduler.step(loop.record["val_dice"])
    if not callbacks.fire("on_validation_end", loop):
        return False
    loop.record_epoch()
    return callbacks.fire("on_save", loop) and callbacks.fire("on_epoch_end", loop)


def run_epochs(
    training: Training, progress: object, start_epoch: int, stop: threading.Event, callbacks: Callbacks = NO_CALLBACKS
) -> str:
    """Train from ``start_epoch`` (``progress``, a progress.Progress, holding the epochs up to it) to the
    configured end, calling ``callbacks`` at their points; the stop reason."""
    loop = Loop(training, stop, progress, start_epoch)
    try:
        going, epoch = callbacks.fire("on_train_start", loop), start_epoch
        while going and epoch < training.settings.train.epochs:
            epoch += 1
            going = run_epoch(loop, epoch, callbacks)
        if going:
            loop.stop_run(COMPLETED)
    except KeyboardInterrupt:  # a second signal: the files describe the last saved epoch
        loop.stop_run(INTERRUPTED)
    finally:
        callbacks.fire("on_train_end", loop)
    return loop.stop_reason
