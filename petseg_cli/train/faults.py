"""A test-only fault: PETSEG_KILL_AT=EPOCH:RANK makes that process SIGKILL itself as epoch EPOCH begins
(EPOCH alone: every process that sees the variable), in the first attempt of a torchrun job only
(TORCHELASTIC_RESTART_COUNT 0 or unset), so that the tests can show what a restart continues. With
PETSEG_KILL_AGENT=1 it kills its torchrun agent first: the whole node is gone. Unset, it costs one
environment look-up per epoch."""

from __future__ import annotations

import os
import signal

KILL_AT_VARIABLE = "PETSEG_KILL_AT"
KILL_AGENT_VARIABLE = "PETSEG_KILL_AGENT"


def die_if_asked(epoch: int, rank: int) -> None:
    asked = os.environ.get(KILL_AT_VARIABLE)
    if not asked or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    kill_epoch, _, kill_rank = asked.partition(":")
    if int(kill_epoch) == epoch and (not kill_rank or int(kill_rank) == rank):
        if os.environ.get(KILL_AGENT_VARIABLE) == "1":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
