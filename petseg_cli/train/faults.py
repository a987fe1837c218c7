"""A test-only fault: PETSEG_KILL_AT=EPOCH:RANK makes that process SIGKILL itself as epoch EPOCH begins,
in the first attempt of a torchrun job only (TORCHELASTIC_RESTART_COUNT 0 or unset), so that the tests
can show what a restart continues. Unset, it costs one environment look-up per epoch."""

from __future__ import annotations

import os
import signal

KILL_AT_VARIABLE = "PETSEG_KILL_AT"


def die_if_asked(epoch: int, rank: int) -> None:
    asked = os.environ.get(KILL_AT_VARIABLE)
    if not asked or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    kill_epoch, _, kill_rank = asked.partition(":")
    if int(kill_epoch) == epoch and int(kill_rank or 0) == rank:
        os.kill(os.getpid(), signal.SIGKILL)
