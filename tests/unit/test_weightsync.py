"""Weight sync: buckets, announcements, bit-exact round trips per method (subscriber in its own process),
tied weights into an HF model, version order and retention. Failures and timeouts: test_weightsync_failures.py.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from spear_stream.weightsync import (
    TensorSpec,
    WeightAnnouncement,
    WeightSyncError,
    WeightVersionGone,
    flatten,
    make_publisher,
    make_subscriber,
    plan_buckets,
    prepare_state_dict,
    unflatten,
)
from spear_stream.weightsync.disk import DiskPublisher, DiskSubscriber
from spear_stream.weightsync.dist import DistPublisher, DistSubscriber
from spear_stream.weightsync.probe import ProbeProcess, tensor_digest
from spear_stream.weightsync.shm import ShmPublisher, ShmSubscriber

pytestmark = pytest.mark.timeout(120)
METHODS = ("disk", "shm", "dist")


def odd_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Mixed dtypes, a transposed view, a scalar, an empty tensor, NaNs with payload bits, a tied alias."""
    g = torch.Generator().manual_seed(seed)
    nan_payloads = torch.tensor([0x7FC00001, 0x7FA00000, 0xFFC12345], dtype=torch.int64).to(torch.int32)
    sd = {
        "embed.weight": torch.randn(50, 16, generator=g),
        "layer.0.w": torch.randn(16, 24, generator=g).t(),  # non-contiguous
        "layer.0.b": torch.randn(24, generator=g).to(torch.bfloat16),
        "layer.1.w": torch.randn(24, 8, generator=g).to(torch.float16),
        "big": torch.randn(3000, generator=g),  # larger than the 4 KB test bucket: a bucket of its own
        "steps": torch.tensor(seed, dtype=torch.int64),
        "mask": torch.rand(7, generator=g) > 0.5,
        "empty": torch.empty(0, 4),
        "nans": nan_payloads.view(torch.float32),
    }
    sd["lm_head.weight"] = sd["embed.weight"]  # tied: must travel once
    return sd


def test_buckets_round_trip_bit_exact():
    tensors, manifest = prepare_state_dict(odd_state_dict(0))
    assert "lm_head.weight" not in tensors and [s.name for s in manifest] == list(tensors)
    buckets = plan_buckets(manifest, bucket_bytes=4096)
    assert len(buckets) > 5 and {b.dtype for b in buckets} == {t.dtype for t in tensors.values()}
    assert all(b.nbytes <= 4096 or len(b.slots) == 1 for b in buckets)
    assert plan_buckets(manifest, 4096) == buckets  # both ends derive the same layout from the manifest
    back = unflatten(flatten(tensors, buckets), buckets)
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert tensor_digest(back[name]) == tensor_digest(tensor), name


def test_announcement_json_round_trip_and_rejects_garbage():
    ann = WeightAnnouncement(3, "disk", {"path": "/x"}, [TensorSpec("a", (2, 3), "bfloat16")], 1024)
    again = WeightAnnouncement.from_json(ann.to_json())
    assert again == ann and again.nbytes == 12
    bad = json.loads(ann.to_json())
    bad["manifest"][0][2] = "os.system"
    for text in ("{", json.dumps({"version": 1}), json.dumps(bad)):
        with pytest.raises(WeightSyncError, match="weight"):
            WeightAnnouncement.from_json(text)


def _publisher(method: str, tmp_path, **kwargs):
    if method == "disk":
        return DiskPublisher(tmp_path / "weights", bucket_bytes=4096, **kwargs)
    if method == "shm":
        return ShmPublisher(root=tmp_path / "shm", bucket_bytes=4096, **kwargs)
    return DistPublisher(timeout_s=20.0, bucket_bytes=4096, **kwargs)


@pytest.fixture(scope="module")
def probe():
    """One subscriber process for the module (start-up costs seconds on a loaded machine)."""
    process = ProbeProcess()
    yield process
    process.close()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from spear_stream.models import TinySpec, build_tiny

    out = tmp_path_factory.mktemp("weightsync") / "tiny"
    spec = TinySpec(out=str(out), vocab_size=300, hidden_size=32, num_layers=1, intermediate_size=64)
    return build_tiny(spec, texts=["hello world"] * 20)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_in_another_process_bit_exact(method, tmp_path, probe):
    publisher = _publisher(method, tmp_path)
    try:
        for version in (1, 2, 5):
            sent = odd_state_dict(version)
            announcement = publisher.publish(sent, version)
            reply = probe.request(
                WeightAnnouncement.from_json(announcement.to_json()), timeout_s=20.0, digest=True
            )
            assert "error" not in reply, reply
            assert reply["version"] == version
            expected = {n: tensor_digest(t) for n, t in sent.items() if n != "lm_head.weight"}
            assert reply["names"] == list(expected)
            assert reply["digests"] == expected
        if method == "dist":
            assert publisher.errors() == [] and publisher.delivered(5) == 1
            assert [t.version for t in publisher.transfers] == [1, 2, 5]
    finally:
        publisher.close()


@pytest.mark.parametrize("method", METHODS)
def test_versions_must_increase(method, tmp_path):
    publisher = _publisher(method, tmp_path)
    try:
        publisher.publish({"w": torch.ones(2)}, 4)
        for stale in (4, 3):
            with pytest.raises(ValueError, match="must exceed"):
                publisher.publish({"w": torch.ones(2)}, stale)
    finally:
        publisher.close()


@pytest.mark.parametrize("method", METHODS)
def test_tied_weights_load_into_hf_model(method, tmp_path):
    from spear_stream.models import TinySpec, build_tiny, load_model
    from spear_stream.rollout.hf import HFEngine

    model_dir = build_tiny(
        TinySpec(
            out=str(tmp_path / "tiny"), vocab_size=300, hidden_size=32, num_layers=1, intermediate_size=64
        ),
        texts=["hello world"] * 20,
    )
    learner, worker = load_model(model_dir), load_model(model_dir)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p))  # learner moved away from the worker's weights
    assert learner.lm_head.weight is learner.model.embed_tokens.weight
    publisher = make_publisher(method, run_dir=tmp_path / "run", timeout_s=20.0)
    subscriber = make_subscriber(method, timeout_s=20.0)
    try:
        announcement = publisher.publish(learner.state_dict(), 1)
        names = [spec.name for spec in announcement.manifest]
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
        engine = HFEngine(worker)
        engine.load_weights(subscriber.fetch(announcement), announcement.version)
    finally:
        subscriber.close()
        publisher.close()
    assert engine.version == 1
    assert worker.lm_head.weight is worker.model.embed_tokens.weight  # still tied after the load
    for (name, mine), theirs in zip(learner.state_dict().items(), worker.state_dict().values()):
        assert torch.equal(mine, theirs), name


@pytest.mark.parametrize("method", ["disk", "shm"])
def test_retention_keeps_newest_k(method, tmp_path):
    publisher = _publisher(method, tmp_path, keep_last=2)
    subscriber = DiskSubscriber(timeout_s=2.0) if method == "disk" else ShmSubscriber(timeout_s=2.0)
    try:
        announcements = [publisher.publish({"w": torch.full((3,), float(v))}, v) for v in range(1, 6)]
        assert publisher.dirs.versions() == [4, 5]
        assert torch.equal(subscriber.fetch(announcements[-1])["w"], torch.full((3,), 5.0))
        with pytest.raises(WeightVersionGone, match="retention") as gone:
            subscriber.fetch(announcements[0])
        assert gone.value.latest == 5
    finally:
        publisher.close()


def test_disk_version_is_an_hf_directory(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    publisher = DiskPublisher(tmp_path / "weights", model_dir=tmp_path / "model")
    announcement = publisher.publish({"w": torch.ones(2)}, 7)
    version_dir = tmp_path / "weights" / "v7"
    assert announcement.location["path"] == str(version_dir / "model.safetensors")
    assert sorted(p.name for p in version_dir.iterdir()) == ["READY", "config.json", "model.safetensors"]


def test_dist_old_version_is_gone_after_a_newer_publish():
    publisher = DistPublisher(timeout_s=10.0)
    subscriber = make_subscriber("dist", timeout_s=10.0)
    try:
        first = publisher.publish({"w": torch.zeros(4)}, 1)
        publisher.publish({"w": torch.ones(4)}, 2)
        with pytest.raises(WeightVersionGone, match="only v2") as gone:
            subscriber.fetch(first)
        assert gone.value.latest == 2
    finally:
        publisher.close()


def test_dist_serves_concurrent_subscribers_while_the_learner_publishes():
    import threading

    publisher = DistPublisher(timeout_s=20.0, bucket_bytes=1 << 20)
    sent = {f"layer.{i}": torch.randn(1 << 18) for i in range(8)}  # 8 MB in 8 buckets
    results: dict[int, dict[str, torch.Tensor] | BaseException] = {}

    def worker(i: int) -> None:
        try:
            results[i] = DistSubscriber(timeout_s=20.0, peer=f"w{i}").fetch(announcement)
        except BaseException as err:
            results[i] = err

    try:
        announcement = publisher.publish(sent, 1)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        publisher.wait_delivered(1, count=3, timeout_s=20.0)
        for thread in threads:
            thread.join(timeout=20.0)
        for i in range(3):
            got = results[i]
            assert isinstance(got, dict), got
            assert all(torch.equal(got[n], t) for n, t in sent.items())
        assert sorted(t.peer for t in publisher.transfers) == ["w0", "w1", "w2"]
        start = time.monotonic()
        publisher.publish({n: t + 1 for n, t in sent.items()}, 2)  # only a snapshot copy on this thread
        assert time.monotonic() - start < 10.0  # the receivers hold their transfers open far longer
    finally:
        publisher.close()
