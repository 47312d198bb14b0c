"""The stream worker's handling of a consumer group that never finishes rebalancing: the consumer
here is a stand-in that answers every commit as Kafka does during a rebalance (the real broker,
group and runs are exercised by test_stream, test_recovery and test_scale_out)."""

import logging

import pytest
from kafka.errors import RebalanceInProgressError

from flight_platform.clients.mongo import DEAD_LETTERS, RESPONSES
from flight_platform.streaming import worker
from flight_platform.streaming.worker import PredictionStreamWorker, RebalanceStuck


class RebalancingConsumer:
    def __init__(self):
        self.rebalancing = True

    def commit(self, offsets=None, timeout_ms=None):
        if self.rebalancing:
            raise RebalanceInProgressError()


def idle_worker(consumer) -> PredictionStreamWorker:
    return PredictionStreamWorker(consumer, scorer=None, model_version="v1",
                                  database={RESPONSES: None, DEAD_LETTERS: None},
                                  log=logging.getLogger("test"))


def test_a_rebalance_in_progress_is_waited_out(caplog):
    consumer = RebalancingConsumer()
    stream = idle_worker(consumer)
    stream.confirm_membership()
    stream.confirm_membership()
    assert "during a rebalance" in caplog.text
    consumer.rebalancing = False
    stream.confirm_membership()  # completed: the clock starts again at the next rebalance
    assert stream._rebalancing_since is None


def test_a_rebalance_that_never_completes_ends_the_run(monkeypatch):
    monkeypatch.setattr(worker, "STUCK_REBALANCE_S", -1.0)  # "too long" is any time at all
    with pytest.raises(RebalanceStuck, match="fresh consumer"):
        idle_worker(RebalancingConsumer()).confirm_membership()
