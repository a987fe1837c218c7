"""The process group's store under torchrun (petseg_cli/machine/rendezvous.py): a restarted process that
finds the previous attempt's port in torchrun's store waits for this attempt's instead of using it.

No torchrun here: a TCPStore plays the agent's store, threads play the processes (tests/test_elastic.py
runs the real thing)."""

import socket
import threading
from datetime import timedelta

import pytest
import torch.distributed as dist

from petseg_cli.machine import rendezvous

TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def agent_store(monkeypatch):
    """torchrun's store, kept across restarts, as the workers find it: MASTER_ADDR and MASTER_PORT."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, TIMEOUT, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    return store


def dead_port():
    """A port that nothing listens on any more, like the store of a process that torchrun stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_sharing_its_store_is_read_from_its_variable():
    assert rendezvous.shares_agent_store({"TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert not rendezvous.shares_agent_store({"TORCHELASTIC_USE_AGENT_STORE": "False"})
    assert not rendezvous.shares_agent_store({})


def test_a_restarted_process_waits_for_this_attempts_store_not_the_dead_ones(agent_store):
    agent_store.set(rendezvous.PORT_KEY, str(dead_port()))  # left by the previous attempt
    found = {}

    def second_process():
        found["store"] = rendezvous.fresh_store(1, 2, TIMEOUT)

    thread = threading.Thread(target=second_process, daemon=True)
    thread.start()
    thread.join(1.0)  # it reads the stale port first: nothing answers there, so it keeps reading
    assert "store" not in found
    first = rendezvous.fresh_store(0, 2, TIMEOUT)  # this attempt's first process writes its own
    thread.join(TIMEOUT.total_seconds())
    assert not thread.is_alive(), "the second process did not find the first one's store"
    found["store"].set("from the second process", "hello")
    assert first.get("from the second process") == b"hello"  # one store, shared
    assert int(agent_store.get(rendezvous.PORT_KEY)) == first.port


def test_each_first_process_starts_a_store_of_its_own(agent_store):
    ports = {rendezvous.fresh_store(0, 2, TIMEOUT).port for _ in range(2)}  # two attempts, both alive here
    assert len(ports) == 2 and agent_store.port not in ports
