"""The training progress bar, a callback, and its text: the run's time left first, so that an 80-column
terminal shows it (tqdm shrinks the bar itself to fit the width, but cuts text that does not fit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callbacks import Callback, Loop

if TYPE_CHECKING:
    from .clock import RunClock

# tqdm's own format without its per-epoch "<remaining" and its batches per second (img/s says the
# speed; the time left is the run's, in the postfix).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def postfix(left: str, loss: float, images_per_second: float) -> str:
    """The run's time left, the epoch's loss so far and the speed."""
    return f"left {left}, loss {loss:.4f}, {images_per_second:.1f} img/s"


def bar_options(description: str, quiet: bool | None) -> dict[str, Any]:
    return {"desc": description, "leave": False, "unit": "batch", "disable": quiet, "bar_format": BAR_FORMAT}


class Bar(Callback):
    """The bar of each epoch's training steps (in the first process, on a terminal), with the run's time
    left from ``clock``, the loss and the speed at every check."""

    def __init__(self, clock: RunClock) -> None:
        self.clock, self.bar = clock, None

    def on_epoch_start(self, loop: Loop) -> None:
        from tqdm import tqdm

        quiet = None if loop.training.dist.is_main else True  # None: a bar only on a terminal
        description = f"epoch {loop.epoch}/{loop.training.horizon.epochs}"
        self.bar = tqdm(total=len(loop.training.train_loader), **bar_options(description, quiet))

    def on_step_end(self, loop: Loop) -> None:
        self.bar.update()
        if loop.batch == loop.steps:  # the last step: the bar goes, as the epoch validates
            self.close()

    def on_check(self, loop: Loop) -> None:
        if self.bar is None:  # closed after the last step
            return
        left = self.clock.left_during_training(loop.fraction, loop.elapsed)
        self.bar.set_postfix_str(postfix(left, loop.loss, loop.seen / loop.elapsed), refresh=False)

    def on_validation_start(self, loop: Loop) -> None:
        self.close()

    def on_train_end(self, loop: Loop) -> None:
        self.close()  # an epoch cut short

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def rendered(description: str, done: int, total: int, elapsed: float, text: str, columns: int) -> str:
    """The bar's line as tqdm draws it in ``columns`` columns."""
    from tqdm import tqdm

    return tqdm.format_meter(done, total, elapsed, ncols=columns, prefix=description, postfix=text, bar_format=BAR_FORMAT)
