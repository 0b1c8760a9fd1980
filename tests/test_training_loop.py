"""The shared epoch loop's contract with the stop vote, on a stand-in trainer."""

from __future__ import annotations

from types import SimpleNamespace

from checkpoint import TrainState
from core.lifecycle import StopRequest
from core.training_loop import EpochLoop, LoopSettings


class RecordingVote:
    """Records the order of casts and waits, as a two-rank `StopVote` would see them."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.in_flight = False

    def poll(self, flag: bool) -> bool:
        self.events.append("poll")
        self.in_flight = True
        return False

    def close(self) -> bool:
        self.events.append("close")
        self.in_flight = False
        return False


class CountingLoop(EpochLoop):
    def __init__(self, epochs: int, batches: int) -> None:
        self.runtime = SimpleNamespace(is_main=True)
        self.state = TrainState(world_size=1, seed=0)
        self.train_loader = list(range(batches))
        self.sampler = SimpleNamespace(set_epoch=lambda epoch, skip: None)
        self.stop_request = StopRequest()
        self.stop_vote = RecordingVote()
        self.max_steps = None
        self.loop = LoopSettings(epochs, log_interval=100, eval_interval=100, batch_size=1)
        self.last_saved_step = 0
        self.saved_with_vote_in_flight: list[bool] = []

    def train_step(self, batch: int) -> None:
        return None

    def save(self) -> None:
        self.saved_with_vote_in_flight.append(self.stop_vote.in_flight)
        self.last_saved_step = self.state.step


def test_a_finished_run_waits_for_its_last_vote_before_the_final_save() -> None:
    """Every vote cast is waited for before `fit` returns, so no rank leaves the process
    group with an all-reduce in flight (that aborted a rank with SIGABRT at exit)."""
    loop = CountingLoop(epochs=2, batches=3)
    loop.fit()
    assert loop.state.step == 6
    assert loop.stop_vote.events == ["poll"] * 6 + ["close"]
    assert loop.saved_with_vote_in_flight == [False]  # the final save's gather comes after
