"""A stop that lands while a stage is being started still reaches that stage."""

from __future__ import annotations

import os
import signal

import pytest

from batchline import interrupts


def test_a_signal_during_the_block_is_delivered_after_it() -> None:
    steps: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("the block finished")  # not cut short by the signal
        steps.append("after the block")  # the signal is delivered first
    assert steps == ["the block finished"]


def test_the_handlers_in_place_before_are_the_ones_that_act() -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]  # delivered once, by the handler that was there
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_without_a_signal_nothing_happens() -> None:
    with interrupts.held():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
