"""The store through which the processes of a torchrun job find each other: a fresh one for every start.

torchrun's c10d rendezvous (torch 2.13) gives its workers the address of one TCPStore that the agent
keeps for the whole job (TORCHELASTIC_USE_AGENT_STORE=True), and a restart reuses it with the previous
attempt's keys still in it. gloo publishes each process's address under fixed keys there, so a
restarted process that reads them before its peer has written them again gets the address of a
process that is gone: it fails to connect, or waits for a peer that never answers (the hang of
issue 25). torch's own TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 avoids it, but torchrun reads it, not petseg.

So here the first process starts a TCPStore of its own, on a free port, and writes the port into the
agent's store; the others read it and connect. A port left there by an earlier attempt is recognised
because nothing answers on it any more (torchrun stops every worker of an attempt before it starts
the next), and is read again until the first process of this attempt has written its own.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from torch.distributed import Store

PORT_KEY = "petseg/process-group-store-port"
RETRY_SECONDS = 0.2
CONNECT_SECONDS = 10.0


def shares_agent_store(environ: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun pointed MASTER_ADDR:MASTER_PORT at its own store, kept across restarts."""
    return (os.environ if environ is None else environ).get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def fresh_store(rank: int, world_size: int, timeout: timedelta) -> "Store":
    """A store that no earlier attempt of the job has written to, the same one in every process."""
    from torch.distributed import TCPStore

    host = os.environ["MASTER_ADDR"]
    agent = TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    if rank == 0:
        store = TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        agent.set(PORT_KEY, str(store.port))
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port = int(agent.get(PORT_KEY))  # waits until a first process has written one
        store = _connect(host, port, world_size, timeout)
        if store is not None:
            return store
        if time.monotonic() > deadline:
            raise TimeoutError(f"no process group store answered at {host}:{port} within {timeout}")
        time.sleep(RETRY_SECONDS)


def _connect(host: str, port: int, world_size: int, timeout: timedelta) -> "Store | None":
    """A client of the store at ``host:port``; None when nothing there answers (an earlier attempt's)."""
    from torch.distributed import DistError, TCPStore

    try:  # a plain connection first: a stale port is refused at once, without TCPStore's retries and logs
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        store = TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=CONNECT_SECONDS))
    except (OSError, DistError):
        return None
    store.set_timeout(timeout)
    return store
