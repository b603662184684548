"""Waiting for processes a test killed (psutil; PID 1 in a container may not reap them)."""

from __future__ import annotations

import time

import psutil


def wait_gone(procs: list[psutil.Process], timeout: float = 20, poll: float = 0.02) -> None:
    """Until each of ``procs`` has exited (or is a zombie), at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        while time.monotonic() < deadline:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(poll)
