"""Every Redis key moodq writes, named in one place (as arq's ``constants.py``).

All keys sit under the settings' ``key_prefix`` (default ``moodq``), so one Redis can host
several deployments and ``moodq purge`` removes exactly one. The task queue itself belongs to
kombu: its lists and bindings are reached through kombu's channel API (:mod:`worker.jobs.broker`),
never by hand-written key names.

  rec:<id>              the record, as JSON (expires ``record_ttl_days`` after its last change)
  seq                   counter giving each accepted message its order
  index                 sorted set of every record id, by seq
  status:<status>       set of ids in that status (pending, labeled, done, review, failed)
  events                sorted set of ids by the time they were labeled or failed (last day; stats)
  conv:<cid>            sorted set of a conversation's message ids, by seq (bounded)
  todo:<queue>:<stage>  sorted set of ids waiting for a stage; a running task claims a few to batch
  lease:<stage>:<id>    the task drafting a claimed message in its batch (its id), expiring after the
                        task's hard limit: the message's own task waits while it exists
  unpublished           sorted set of ids whose record exists but whose task may not be published
                        yet, by the time the record was written (``moodq sweep`` re-publishes old ones)
  alerts                list of the last negative-share alerts (``moodq stats --alert-negative``)
  follow:<path>         hash: how far ``moodq follow`` has read a file (offset, line, inode)
  heartbeat:<node>      a live worker's health, expiring when it stops beating (``moodq check``)
"""

from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("pending", "labeled", "done", "review", "failed")


@dataclass(frozen=True)
class Keys:
    prefix: str
    queue: str

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def rec(self, mid: str) -> str:
        return self._k("rec", mid)

    def status(self, status: str) -> str:
        return self._k("status", status)

    def conv(self, cid: str) -> str:
        return self._k("conv", cid)

    def todo(self, stage: str) -> str:
        return self._k("todo", self.queue, stage)  # per queue: a worker batches only its own queue's messages

    def lease(self, stage: str, mid: str) -> str:
        return self._k("lease", stage, mid)

    def follow(self, source: str) -> str:
        return self._k("follow", source)

    def heartbeat(self, node: str) -> str:
        return self._k("heartbeat", node)

    @property
    def seq(self) -> str:
        return self._k("seq")

    @property
    def index(self) -> str:
        return self._k("index")

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def unpublished(self) -> str:
        return self._k("unpublished")

    @property
    def alerts(self) -> str:
        return self._k("alerts")

    @property
    def heartbeats(self) -> str:
        return self._k("heartbeat", "*")

    @property
    def everything(self) -> str:
        """A SCAN pattern for every key of this prefix."""
        return self._k("*")

    def test(self, *parts: str) -> str:
        """Keys the test suite's fault injection uses (``tests/faults.py``); nothing else writes them."""
        return self._k("test", *parts)
