"""Long polling: a request waiting for its answer registers here, and one watcher per worker process
looks all waited-for ids up in MongoDB with one query every `INTERVAL_S`. A thousand waiting pages
cost one small query per interval, not a thousand; under gunicorn's gevent workers a waiting
request is a parked greenlet, not a thread."""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

# The longest a request waits for its answer: under common proxies' 30 s idle timeout (a page
# waiting longer asks again).
MAX_WAIT_S = 20
# The answer is stored ~10 ms after its POST: a page learns of it within this much more.
INTERVAL_S = 0.005
# MongoDB unreachable: waiting requests time out into their endpoint's 503 meanwhile.
RETRY_AFTER_ERROR_S = 0.5

FindAnswers = Callable[[list[str]], Iterable[dict[str, Any]]]


class _Waiter:
    __slots__ = ("answered", "answer")

    def __init__(self):
        self.answered = threading.Event()
        self.answer: dict[str, Any] | None = None


class AnswerWatch:
    def __init__(self, find_answers: FindAnswers, interval_s: float = INTERVAL_S):
        """`find_answers(ids)` returns the stored answers among `ids`, each with its `_id`."""
        self._find_answers = find_answers
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._anyone_waiting = threading.Event()
        self._watcher: threading.Thread | None = None

    def wait(self, request_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The answer to `request_id` once it is stored, or None after `timeout_s`."""
        waiter = _Waiter()
        with self._lock:
            self._waiters.setdefault(request_id, []).append(waiter)
            self._anyone_waiting.set()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="answer-watch",
                                                 daemon=True)
                self._watcher.start()
        waiter.answered.wait(timeout_s)
        with self._lock:
            waiting = self._waiters.get(request_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._waiters[request_id]
        return waiter.answer

    def waiting(self) -> int:
        with self._lock:
            return sum(map(len, self._waiters.values()))

    def _watch(self) -> None:
        while True:
            self._anyone_waiting.wait()
            with self._lock:
                request_ids = list(self._waiters)
                if not request_ids:
                    self._anyone_waiting.clear()
                    continue
            try:
                answers = list(self._find_answers(request_ids))
            except PyMongoError as error:
                log.warning("Looking up %d waited-for answers failed: %s", len(request_ids), error)
                time.sleep(RETRY_AFTER_ERROR_S)
                continue
            with self._lock:
                for answer in answers:
                    for waiter in self._waiters.pop(answer["_id"], []):
                        waiter.answer = answer
                        waiter.answered.set()
            time.sleep(self._interval_s)
