"""Weight sync failures: every wait ends within its timeout with a WeightSyncError that names the method and
the peer; a dead or absent subscriber is skipped by the dist publisher, which keeps serving the others."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import torch
from torch.distributed import TCPStore

from spear_stream.utils import free_port
from spear_stream.weightsync import TensorSpec, WeightAnnouncement, WeightSyncError, make_subscriber
from spear_stream.weightsync import dist as dist_sync
from spear_stream.weightsync.dist import HELLOS, DistPublisher, DistSubscriber
from spear_stream.weightsync.probe import ProbeProcess

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 1.5
SLACK_S = 10.0  # a loaded 2-core machine; still far below "hangs" (without the timeout: forever)

FAULTY_PROBE = """
import os
import spear_stream.weightsync.dist as dist
from spear_stream.weightsync import probe

real_pair_group = dist._pair_group

def join_then_die(*args, **kwargs):
    real_pair_group(*args, **kwargs)
    os._exit(3)  # joined the pair group, dies before receiving the payload

dist._pair_group = join_then_die
probe._serve_stdin()
"""


def _elapsed(fn) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        fn()
    except BaseException as err:
        return err, time.monotonic() - start
    return None, time.monotonic() - start


def _wait_for_error(publisher: DistPublisher, within_s: float) -> list[WeightSyncError]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        errors = publisher.errors()
        if errors:
            return errors
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("method", ["disk", "shm"])
def test_file_subscriber_times_out_on_a_version_never_written(method, tmp_path):
    location = {"path": str(tmp_path / "v9" / "x"), "host": __import__("socket").gethostname(), "nbytes": 8}
    announcement = WeightAnnouncement(9, method, location, [TensorSpec("w", (2,), "float32")])
    err, seconds = _elapsed(lambda: make_subscriber(method, timeout_s=TIMEOUT_S).fetch(announcement))
    assert isinstance(err, WeightSyncError) and f"{method} subscriber (v9" in str(err) and "READY" in str(err)
    assert TIMEOUT_S <= seconds < TIMEOUT_S + SLACK_S


def test_dist_subscriber_times_out_without_a_publisher():
    location = {"host": "127.0.0.1", "port": free_port(), "token": "x", "backend": "gloo"}
    announcement = WeightAnnouncement(1, "dist", location, [TensorSpec("w", (2,), "float32")])
    err, seconds = _elapsed(lambda: DistSubscriber(timeout_s=TIMEOUT_S, peer="w7").fetch(announcement))
    assert isinstance(err, WeightSyncError), err
    assert "dist subscriber w7 <- publisher 127.0.0.1" in str(err) and "v1" in str(err)
    assert seconds < TIMEOUT_S + SLACK_S


def test_dist_subscriber_times_out_when_the_publisher_stops_answering(monkeypatch):
    monkeypatch.setattr(DistPublisher, "_serve", lambda self, hello: None)  # store up, requests unanswered
    publisher = DistPublisher(timeout_s=10.0)
    try:
        announcement = publisher.publish({"w": torch.ones(3)}, 1)
        err, seconds = _elapsed(lambda: DistSubscriber(timeout_s=TIMEOUT_S).fetch(announcement))
        assert isinstance(err, WeightSyncError) and "waiting for the publisher to answer" in str(err)
        assert TIMEOUT_S <= seconds < TIMEOUT_S + SLACK_S
    finally:
        publisher.close()


def test_dist_after_close_publish_fails_and_fetch_fails_within_the_timeout():
    publisher = DistPublisher(timeout_s=10.0)
    announcement = publisher.publish({"w": torch.ones(3)}, 1)
    publisher.close()
    publisher.close()  # idempotent
    with pytest.raises(WeightSyncError, match="accept thread has stopped"):
        publisher.publish({"w": torch.ones(3)}, 2)
    err, seconds = _elapsed(lambda: DistSubscriber(timeout_s=TIMEOUT_S).fetch(announcement))
    assert isinstance(err, WeightSyncError) and "connecting to the publisher's store" in str(err), err
    assert seconds < TIMEOUT_S + SLACK_S


def test_dist_subscriber_fails_when_the_publisher_hangs_mid_transfer(monkeypatch):
    real_pair_group = dist_sync._pair_group

    class StallsAfterFirstBucket:
        def __init__(self, group) -> None:
            self.group, self.calls = group, 0

        def broadcast(self, tensors):
            self.calls += 1
            if self.calls == 1:
                return self.group.broadcast(tensors)
            time.sleep(TIMEOUT_S + SLACK_S)  # the learner's session thread hangs
            raise RuntimeError("stalled publisher gives up")

    def pair_group(store, session, rank, *args):
        group = real_pair_group(store, session, rank, *args)
        return StallsAfterFirstBucket(group) if rank == 0 else group

    monkeypatch.setattr(dist_sync, "_pair_group", pair_group)
    publisher = DistPublisher(timeout_s=10.0, bucket_bytes=1024)
    try:
        announcement = publisher.publish({f"w{i}": torch.ones(256) for i in range(4)}, 1)  # 4 buckets
        err, seconds = _elapsed(lambda: DistSubscriber(timeout_s=TIMEOUT_S).fetch(announcement))
        assert isinstance(err, WeightSyncError) and "receiving bucket 2/4" in str(err), err
        assert seconds < TIMEOUT_S + SLACK_S
    finally:
        publisher.close()


def test_dist_publisher_skips_a_subscriber_that_never_joins_and_serves_others():
    publisher = DistPublisher(timeout_s=TIMEOUT_S)
    try:
        announcement = publisher.publish({"w": torch.arange(10.0)}, 1)
        ghost = TCPStore("127.0.0.1", publisher.port, None, False, timedelta(seconds=5))
        hello = {"session": "ghost", "version": 1, "token": publisher.token, "peer": "ghost-worker"}
        ghost.queue_push(HELLOS, json.dumps(hello))  # asks for v1, then never joins the pair group
        start = time.monotonic()
        got = DistSubscriber(timeout_s=10.0).fetch(announcement)  # not blocked by the ghost
        assert torch.equal(got["w"], torch.arange(10.0))
        errors = _wait_for_error(publisher, TIMEOUT_S + SLACK_S - (time.monotonic() - start))
        assert len(errors) == 1 and "ghost-worker failed to receive v1" in str(errors[0]), errors
        assert "skipped it" in str(errors[0]) and "timeout 1.5s" in str(errors[0])
        assert publisher.delivered(1) == 1
    finally:
        publisher.close()


def test_dist_publisher_skips_a_subscriber_that_dies_mid_transfer():
    publisher = DistPublisher(timeout_s=TIMEOUT_S)
    faulty = ProbeProcess(code=FAULTY_PROBE)
    try:
        # 32 MB: more than the loopback socket buffers hold, so the sender must notice the dead peer
        announcement = publisher.publish({"w": torch.ones(8 << 20)}, 1)
        faulty.send_line(json.dumps({"announcement": announcement.to_json(), "timeout_s": 10.0}))
        errors = _wait_for_error(publisher, TIMEOUT_S + SLACK_S + 5.0)
        assert len(errors) == 1 and f":{faulty.pid} failed to receive v1" in str(errors[0]), errors
        assert faulty.proc.wait(timeout=10) == 3
        got = DistSubscriber(timeout_s=20.0).fetch(announcement)  # the publisher still serves others
        assert torch.equal(got["w"], torch.ones(8 << 20)) and publisher.delivered(1) == 1
    finally:
        faulty.close()
        publisher.close()


def test_dist_wait_delivered_times_out_with_a_count():
    publisher = DistPublisher(timeout_s=5.0)
    try:
        publisher.publish({"w": torch.ones(2)}, 3)
        err, seconds = _elapsed(lambda: publisher.wait_delivered(3, count=2, timeout_s=0.5))
        assert isinstance(err, WeightSyncError) and "only 0/2 subscribers received v3" in str(err)
        assert seconds < 0.5 + SLACK_S
    finally:
        publisher.close()
