"""A colocated-vLLM GRPO run started without a launcher gets a port of its own for the engine's one-process group,
so two such runs starting together on one machine do not both bind TRL's first choice (29500)."""

from __future__ import annotations

import os
import socket

import pytest

from spatialreasoner.train.vllm_colocate import single_process_rendezvous

TRL_CHOICES = {"29500", "23456", "12355", "12345"}


@pytest.fixture
def no_rendezvous(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_unlaunched_run_gets_a_free_port_of_its_own(no_rendezvous):
    single_process_rendezvous()
    port = os.environ["MASTER_PORT"]
    assert port not in TRL_CHOICES
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((os.environ["MASTER_ADDR"], int(port)))  # free when chosen


def test_two_unlaunched_runs_get_different_ports(no_rendezvous, monkeypatch):
    ports = set()
    for _ in range(2):
        monkeypatch.delenv("MASTER_PORT", raising=False)
        single_process_rendezvous()
        ports.add(os.environ["MASTER_PORT"])
    assert len(ports) == 2


@pytest.mark.parametrize("value", ["0", "auto"])
def test_port_zero_or_auto_is_resolved(no_rendezvous, monkeypatch, value):
    monkeypatch.setenv("MASTER_PORT", value)
    single_process_rendezvous()
    assert int(os.environ["MASTER_PORT"]) > 0


def test_explicit_port_is_kept(no_rendezvous, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "31234")
    single_process_rendezvous()
    assert os.environ["MASTER_PORT"] == "31234"


def test_launched_ranks_are_left_to_the_launcher(no_rendezvous, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    single_process_rendezvous()
    assert "MASTER_PORT" not in os.environ
