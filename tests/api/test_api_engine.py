"""The batching engine: grouping, limits, 429 when full, failures reach every waiter, wedged loops show in health."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from engine import (Batcher, BatchFailed, EmbeddingEngine, EngineStopped, ModelState, NotReady, Overloaded,
                    RequestTimedOut)

WAIT = 5.0  # generous bound on every wait in this file; the happy paths take milliseconds


class Recorder:
    """run_batch that records each batch and can be held (to pile up a queue) or made to fail."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, object, list]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on: object = None

    def __call__(self, kind, options, payloads):
        self.entered.set()
        assert self.gate.wait(WAIT)
        self.batches.append((kind, options, list(payloads)))
        if self.fail_on is not None and self.fail_on in payloads:
            raise ValueError("bad payload")
        return [f"{kind}/{options}/{p}" for p in payloads]

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def make_batcher(recorder):
    made = []

    def make(**kwargs):
        batcher = Batcher(recorder, **{"max_wait_s": 0.0, **kwargs})
        batcher.start()
        made.append(batcher)
        return batcher

    yield make
    recorder.gate.set()
    for batcher in made:
        batcher.shutdown(timeout=WAIT)


def results(futures):
    return [f.result(timeout=WAIT) for f in futures]


def blocked(batcher, recorder):
    """Occupy the inference thread with a held batch, so that what is submitted next queues up."""
    recorder.hold()
    first = batcher.submit("text", True, ["blocker"])
    assert recorder.entered.wait(WAIT)
    return first


def test_each_item_gets_its_own_result(make_batcher):
    batcher = make_batcher()
    futures = batcher.submit("text", True, ["a", "b", "c"])
    assert results(futures) == ["text/True/a", "text/True/b", "text/True/c"]


def test_batches_group_by_kind_and_options_and_respect_max_size(make_batcher, recorder):
    batcher = make_batcher(max_batch_size=3)
    first = blocked(batcher, recorder)
    texts = batcher.submit("text", True, [f"t{i}" for i in range(5)])
    raw = batcher.submit("text", False, ["r0", "r1"])
    images = batcher.submit("image", True, ["i0", "i1"])
    recorder.gate.set()
    assert results(texts) == [f"text/True/t{i}" for i in range(5)]
    assert results(raw) == ["text/False/r0", "text/False/r1"]
    assert results(images) == ["image/True/i0", "image/True/i1"]
    results(first)
    for kind, options, payloads in recorder.batches:
        assert 1 <= len(payloads) <= 3
        assert all(p.startswith({("text", True): "t", ("text", False): "r", ("image", True): "i"}[(kind, options)])
                   for p in payloads if p != "blocker")
    assert sorted(len(b[2]) for b in recorder.batches) == [1, 2, 2, 2, 3]


def test_items_of_concurrent_requests_share_a_batch(make_batcher, recorder):
    batcher = make_batcher(max_batch_size=8)
    blocked(batcher, recorder)
    a = batcher.submit("text", True, ["a1", "a2"])
    b = batcher.submit("text", True, ["b1"])
    recorder.gate.set()
    assert results(a) + results(b) == ["text/True/a1", "text/True/a2", "text/True/b1"]
    assert recorder.batches[-1][2] == ["a1", "a2", "b1"]


def test_max_wait_gathers_items_that_arrive_late(make_batcher, recorder):
    batcher = make_batcher(max_batch_size=8, max_wait_s=0.3)
    first = batcher.submit("text", True, ["early"])
    time.sleep(0.05)
    second = batcher.submit("text", True, ["late"])
    results(first + second)
    assert recorder.batches == [("text", True, ["early", "late"])]


def test_full_queue_refuses_the_whole_request_and_keeps_the_rest(make_batcher, recorder):
    batcher = make_batcher(queue_size=4)
    blocked(batcher, recorder)
    accepted = batcher.submit("text", True, ["a", "b", "c"])
    with pytest.raises(Overloaded):
        batcher.submit("text", True, ["d", "e"])
    assert batcher.health().queue_depth == 3      # nothing of the refused request was queued
    recorder.gate.set()
    assert results(accepted) == ["text/True/a", "text/True/b", "text/True/c"]
    assert all("d" not in b[2] for b in recorder.batches)


def test_failing_batch_fails_every_future_and_the_loop_goes_on(make_batcher, recorder):
    batcher = make_batcher(isolate_failures=False)
    blocked(batcher, recorder)
    recorder.fail_on = "bad"
    futures = batcher.submit("text", True, ["ok1", "bad", "ok2"])
    recorder.gate.set()
    for future in futures:
        with pytest.raises(BatchFailed) as info:
            future.result(timeout=WAIT)
        assert isinstance(info.value.__cause__, ValueError)
    recorder.fail_on = None
    assert results(batcher.submit("text", True, ["after"])) == ["text/True/after"]
    assert batcher.health().batches_failed == 1 and batcher.health().healthy


def test_one_bad_item_does_not_fail_its_batch_mates(make_batcher, recorder):
    batcher = make_batcher()
    blocked(batcher, recorder)
    recorder.fail_on = "bad"
    good1 = batcher.submit("text", True, ["ok1"])
    bad = batcher.submit("text", True, ["bad"])
    good2 = batcher.submit("text", True, ["ok2"])
    recorder.gate.set()
    assert results(good1 + good2) == ["text/True/ok1", "text/True/ok2"]
    with pytest.raises(BatchFailed):
        bad[0].result(timeout=WAIT)


def test_wrong_number_of_results_is_a_failure_not_a_hang(make_batcher):
    batcher = Batcher(lambda kind, options, payloads: payloads[:-1], isolate_failures=False)
    batcher.start()
    try:
        futures = batcher.submit("text", True, ["a", "b"])
        for future in futures:
            with pytest.raises(BatchFailed):
                future.result(timeout=WAIT)
    finally:
        batcher.shutdown()


def test_wedged_model_call_makes_health_stalled(make_batcher, recorder):
    batcher = make_batcher(stall_timeout_s=0.2)
    blocked(batcher, recorder)
    assert batcher.health().healthy
    time.sleep(0.35)
    health = batcher.health()
    assert health.running and health.stalled and not health.healthy and health.busy_for_s >= 0.2
    recorder.gate.set()
    deadline = time.monotonic() + WAIT
    while not batcher.health().healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batcher.health().healthy


def test_cancelled_items_are_skipped(make_batcher, recorder):
    batcher = make_batcher()
    blocked(batcher, recorder)
    gone = batcher.submit("text", True, ["gone"])
    assert gone[0].cancel()
    kept = batcher.submit("text", True, ["kept"])
    recorder.gate.set()
    assert results(kept) == ["text/True/kept"]
    assert all("gone" not in b[2] for b in recorder.batches)


def test_shutdown_fails_queued_items_and_refuses_new_ones(make_batcher, recorder):
    batcher = make_batcher()
    blocked(batcher, recorder)
    queued = batcher.submit("text", True, ["q"])
    threading.Timer(0.1, recorder.gate.set).start()
    batcher.shutdown(timeout=WAIT)
    with pytest.raises(EngineStopped):
        queued[0].result(timeout=WAIT)
    with pytest.raises(EngineStopped):
        batcher.submit("text", True, ["late"])
    assert not batcher.health().running


def test_submit_before_start_is_refused(recorder):
    with pytest.raises(EngineStopped):
        Batcher(recorder).submit("text", True, ["a"])


def test_loop_restarts_in_a_forked_child(make_batcher, monkeypatch):
    import engine.batcher as batcher_mod
    batcher = make_batcher()
    real_pid = batcher_mod.os.getpid()
    monkeypatch.setattr(batcher_mod.os, "getpid", lambda: real_pid + 1)   # as seen from a child after fork
    assert not batcher.health().running
    batcher.start()
    assert batcher.health().running
    assert results(batcher.submit("text", True, ["x"])) == ["text/True/x"]


# --- EmbeddingEngine: background load, states, and the model contract ----------------------------

class FakeEncoder:
    """Follows the model-layer contract; only used here, to exercise load states and failures."""

    info = SimpleNamespace(dim=3, logit_scale=100.0, context_length=5)

    def prepare_text(self, text):
        return SimpleNamespace(text=text, truncated=len(text) > 5, tokens=min(len(text), 5))

    def encode_prepared_texts(self, items, normalize=True):
        return np.array([[len(item.text), 1.0, 0.0] for item in items], np.float32)

    def encode_images(self, tensors, normalize=True):
        return np.array([[0.0, 0.0, t] for t in tensors], np.float32)

    def prepare_image(self, image):
        return float(image)


def test_engine_reports_loading_then_ready():
    release = threading.Event()

    def slow_load():
        assert release.wait(WAIT)
        return FakeEncoder()

    engine = EmbeddingEngine(slow_load)
    engine.start()
    try:
        assert engine.state is ModelState.LOADING
        with pytest.raises(NotReady):
            engine.embed_texts(["a"], normalize=True, timeout=1)
        release.set()
        assert engine.wait_ready(WAIT)
        result = engine.embed_texts(["ab", "abcdefg"], normalize=True, timeout=WAIT)
        assert result.embeddings.tolist() == [[2, 1, 0], [7, 1, 0]] and result.truncated == [1]
        assert engine.embed_images([1.5, 2.5], normalize=True, timeout=WAIT).tolist() == [[0, 0, 1.5], [0, 0, 2.5]]
    finally:
        engine.shutdown()


def test_engine_load_failure_is_reported_not_raised():
    def broken():
        raise FileNotFoundError("no bundle at /models/english")

    engine = EmbeddingEngine(broken)
    engine.start()
    assert not engine.wait_ready(WAIT)
    assert engine.state is ModelState.FAILED and isinstance(engine.load_error, FileNotFoundError)
    with pytest.raises(NotReady):
        engine.embed_texts(["a"], normalize=True, timeout=1)


def test_engine_request_timeout_withdraws_queued_items():
    gate = threading.Event()
    seen: list[str] = []

    class Slow(FakeEncoder):
        def encode_prepared_texts(self, items, normalize=True):
            assert gate.wait(WAIT)
            seen.extend(item.text for item in items)
            return super().encode_prepared_texts(items, normalize)

    engine = EmbeddingEngine(Slow, max_wait_s=0)
    engine.start()
    try:
        assert engine.wait_ready(WAIT)
        holder = threading.Thread(target=lambda: engine.embed_texts(["first"], normalize=True, timeout=WAIT))
        holder.start()
        time.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(RequestTimedOut):
            engine.embed_texts(["second"], normalize=True, timeout=0.2)
        assert time.monotonic() - started < 1.0
        gate.set()
        holder.join(WAIT)
        assert engine.embed_texts(["third"], normalize=True, timeout=WAIT).embeddings.shape == (1, 3)
        assert seen == ["first", "third"]   # the timed-out text never reached the model
    finally:
        gate.set()
        engine.shutdown()


# --- text cache, duplicates, truncate=False ---------------------------------------------------------

class CountingEncoder(FakeEncoder):
    def __init__(self) -> None:
        self.encoded: list[list[str]] = []
        self.prepared: list[str] = []

    def prepare_text(self, text):
        self.prepared.append(text)
        return super().prepare_text(text)

    def encode_prepared_texts(self, items, normalize=True):
        self.encoded.append([item.text for item in items])
        return super().encode_prepared_texts(items, normalize) * (1.0 if normalize else 2.0)


@pytest.fixture
def counting_engine():
    made = []

    def make(**kwargs):
        encoder = CountingEncoder()
        engine = EmbeddingEngine(lambda: encoder, max_wait_s=0, **kwargs)
        engine.start()
        assert engine.wait_ready(WAIT)
        made.append(engine)
        return engine, encoder

    yield make
    for engine in made:
        engine.shutdown()


def test_cached_texts_skip_tokenizing_and_the_model(counting_engine):
    engine, encoder = counting_engine(text_cache_size=16)
    first = engine.embed_texts(["ab", "abcdefg"], normalize=True, timeout=WAIT)
    again = engine.embed_texts(["abcdefg", "ab", "new"], normalize=True, timeout=WAIT)
    assert encoder.encoded == [["ab", "abcdefg"], ["new"]] and encoder.prepared == ["ab", "abcdefg", "new"]
    assert again.cache_hits == 2 and first.cache_hits == 0
    assert np.array_equal(again.embeddings[:2], first.embeddings[::-1])
    assert again.truncated == [0] and again.tokens == [5, 2, 3]   # the cached truncation and token counts
    raw = engine.embed_texts(["ab"], normalize=False, timeout=WAIT)  # other options: a separate entry
    assert encoder.encoded[-1] == ["ab"] and raw.embeddings[0, 0] == 2 * first.embeddings[0, 0]


def test_cache_is_bounded_least_recently_used_first(counting_engine):
    engine, encoder = counting_engine(text_cache_size=2)
    for texts in (["a"], ["b"], ["a"], ["c"], ["a"], ["b"]):  # "b" was the least recent when "c" came
        engine.embed_texts(texts, normalize=True, timeout=WAIT)
    assert encoder.encoded == [["a"], ["b"], ["c"], ["b"]]


def test_cache_size_zero_disables_it_but_duplicates_are_still_encoded_once(counting_engine):
    engine, encoder = counting_engine(text_cache_size=0)
    result = engine.embed_texts(["x", "y", "x"], normalize=True, timeout=WAIT)
    engine.embed_texts(["x"], normalize=True, timeout=WAIT)
    assert encoder.encoded == [["x", "y"], ["x"]]
    assert result.embeddings.shape == (3, 3) and np.array_equal(result.embeddings[0], result.embeddings[2])


def test_truncate_false_refuses_before_any_model_call(counting_engine):
    from engine import TextsTooLong

    engine, encoder = counting_engine(text_cache_size=16)
    with pytest.raises(TextsTooLong) as refused:
        engine.embed_texts(["ok", "far too long", "fine", "also too long"], normalize=True, timeout=WAIT,
                           truncate=False)
    assert refused.value.indices == [1, 3] and refused.value.context_length == 5
    assert encoder.encoded == []
    engine.embed_texts(["far too long"], normalize=True, timeout=WAIT)  # cached with its truncation flag ...
    with pytest.raises(TextsTooLong):
        engine.embed_texts(["far too long"], normalize=True, timeout=WAIT, truncate=False)  # ... still refused


# --- the naive design, and clients that leave -------------------------------------------------------

def test_unbatched_runs_each_request_in_its_own_thread(counting_engine):
    engine, encoder = counting_engine(batching=False)
    threads_seen = []
    original = encoder.encode_prepared_texts

    def spy(items, normalize=True):
        threads_seen.append(threading.current_thread().name)
        return original(items, normalize)

    encoder.encode_prepared_texts = spy
    result = engine.embed_texts(["ab", "abc"], normalize=True, timeout=WAIT)
    assert result.embeddings.tolist() == [[2, 1, 0], [3, 1, 0]]
    assert threads_seen == [threading.current_thread().name]
    assert engine.embed_images([1.5], normalize=True, timeout=WAIT).tolist() == [[0, 0, 1.5]]
    health = engine.loop_health()
    assert health.running and health.healthy and health.queue_depth == 0 and health.batches_done == 2


def test_unbatched_model_failure_reaches_the_caller(counting_engine):
    engine, encoder = counting_engine(batching=False)
    encoder.encode_prepared_texts = lambda items, normalize=True: 1 / 0
    with pytest.raises(BatchFailed):
        engine.embed_texts(["a"], normalize=True, timeout=WAIT)
    assert engine.loop_health().batches_failed == 1


def test_a_client_that_left_has_its_items_withdrawn(counting_engine):
    from engine import ClientGone

    engine, encoder = counting_engine()
    gate = threading.Event()
    original = encoder.encode_prepared_texts

    def held(items, normalize=True):
        assert gate.wait(WAIT)
        return original(items, normalize)

    encoder.encode_prepared_texts = held
    holder = threading.Thread(target=lambda: engine.embed_texts(["first"], normalize=True, timeout=WAIT))
    holder.start()
    time.sleep(0.05)  # "first" is in the model; "gone" will wait in the queue
    gone = threading.Event()
    started = time.monotonic()
    threading.Timer(0.2, gone.set).start()
    with pytest.raises(ClientGone):
        engine.embed_texts(["gone"], normalize=True, timeout=WAIT, cancelled=gone.is_set)
    assert time.monotonic() - started < 1.0
    gate.set()
    holder.join(WAIT)
    engine.embed_texts(["third"], normalize=True, timeout=WAIT)
    assert encoder.encoded == [["first"], ["third"]]  # "gone" never reached the model


def test_a_batch_waits_for_more_only_while_requests_are_still_preparing(recorder):
    coming = threading.Event()
    batcher = Batcher(recorder, max_wait_s=1.0, more_coming=coming.is_set)
    batcher.start()
    try:
        started = time.monotonic()
        assert results(batcher.submit("text", True, ["alone"])) == ["text/True/alone"]
        assert time.monotonic() - started < 0.5          # nobody else coming: no 1 s wait at idle
        coming.set()
        first = batcher.submit("text", True, ["a"])
        time.sleep(0.1)                                     # "b" is still being prepared ...
        second = batcher.submit("text", True, ["b"])
        coming.clear()
        batcher.poke()
        assert results(first + second) == ["text/True/a", "text/True/b"]
        assert recorder.batches[-1][2] == ["a", "b"]        # ... and joined the waiting batch
    finally:
        batcher.shutdown(timeout=WAIT)


# --- large requests: windows and fair shares ---------------------------------------------------------

def test_a_waiting_group_takes_only_its_share_of_a_batch(make_batcher, recorder):
    batcher = make_batcher(max_batch_size=8)
    first = blocked(batcher, recorder)
    big = batcher.submit("text", True, [f"big{i}" for i in range(16)])
    small = batcher.submit("text", True, ["small"])
    recorder.gate.set()
    results(first + big + small)
    sizes = [len(b[2]) for b in recorder.batches[1:]]
    assert recorder.batches[1][2] == ["big0", "big1", "big2", "big3", "small"]  # 8 // 2 groups, and the small one
    assert sizes == [5, 8, 4]  # alone again, the big request fills whole batches


def test_a_request_larger_than_the_queue_runs_a_window_at_a_time(counting_engine):
    engine, encoder = counting_engine(max_batch_size=4, queue_size=8)
    texts = [f"t{i}" for i in range(50)]
    result = engine.embed_texts(texts, normalize=True, timeout=WAIT)
    assert result.embeddings[:, 0].tolist() == [len(t) for t in texts]
    assert max(len(batch) for batch in encoder.encoded) <= 4 and sum(map(len, encoder.encoded)) == 50


def test_one_text_requests_are_not_queued_behind_a_large_one():
    """A 600-text request in flight: a one-text request submitted meanwhile runs in one of the next two model
    calls, not after the large request's 600 items."""
    calls: list[list[str]] = []
    entered = threading.Event()

    class Slow(FakeEncoder):
        def encode_prepared_texts(self, items, normalize=True):
            calls.append([item.text for item in items])
            entered.set()
            time.sleep(0.002 * len(items))
            return super().encode_prepared_texts(items, normalize)

    engine = EmbeddingEngine(Slow, max_batch_size=32, max_wait_s=0)
    engine.start()
    try:
        assert engine.wait_ready(WAIT)
        big = threading.Thread(target=lambda: engine.embed_texts([f"b{i}" for i in range(600)], normalize=True,
                                                                 timeout=30))
        big.start()
        assert entered.wait(WAIT)
        before = len(calls)
        engine.embed_texts(["small"], normalize=True, timeout=WAIT)
        served_in = next(i for i, call in enumerate(calls) if "small" in call)
        assert served_in - before <= 1, calls[before:served_in + 1]
        assert big.is_alive()  # the large request was still being served
        big.join(30)
        assert sum(len(c) for c in calls) == 601
    finally:
        engine.shutdown()


def test_bulk_items_ride_along_with_interactive_ones_at_most_half_their_number(make_batcher, recorder):
    batcher = make_batcher(max_batch_size=32)
    first = blocked(batcher, recorder)
    bulk = batcher.submit("text", True, [f"bulk{i}" for i in range(32)], bulk=True)
    small = [batcher.submit("text", True, [f"s{i}"]) for i in range(6)]
    recorder.gate.set()
    results(first + bulk + [f for fs in small for f in fs])
    batch = recorder.batches[1][2]
    assert sorted(p for p in batch if p.startswith("s")) == [f"s{i}" for i in range(6)]
    assert sum(p.startswith("bulk") for p in batch) == 3  # half of the 6 interactive items


def test_a_large_request_is_tokenized_a_window_at_a_time(counting_engine):
    engine, encoder = counting_engine(max_batch_size=4)
    events: list[str] = []
    prepare, encode = encoder.prepare_text, encoder.encode_prepared_texts
    encoder.prepare_text = lambda text: events.append("prepare") or prepare(text)
    encoder.encode_prepared_texts = lambda items, normalize=True: events.append("encode") or encode(items, normalize)
    texts = [f"t{i}" for i in range(12)]
    assert engine.embed_texts(texts, normalize=True, timeout=WAIT).embeddings[:, 0].tolist() == [2] * 10 + [3] * 2
    assert events.index("encode") < events.index("prepare") + 5  # the model started before all 12 were tokenized
    assert events.count("prepare") == 12


# -- admission by expected wait --------------------------------------------------------------------------------
# Costs are set on the batcher's cost model (binary fractions, so the sums are exact) and the loop is held by a
# blocker of a kind with no measured cost: the expected wait is then exactly the queued items' cost.

def held_with_costs(make_batcher, recorder, budget, **costs):
    batcher = make_batcher(max_queue_wait_s=budget, queue_size=1000)
    for kind, per_item in costs.items():
        batcher.costs.observe(None, kind, per_item, 1)
    recorder.hold()
    blocker = batcher.submit("warmup", True, ["blocker"])
    assert recorder.entered.wait(WAIT)
    return batcher, blocker


def test_a_burst_that_fits_the_budget_is_taken_and_answered_in_full(make_batcher, recorder):
    batcher, blocker = held_with_costs(make_batcher, recorder, 3.0, text=0.125)
    burst = [batcher.submit("text", True, [f"t{i}"]) for i in range(24)]  # 24 x 0.125 = 3.0 s: the budget exactly
    assert batcher.health().expected_wait_s == 3.0
    recorder.gate.set()
    assert [results(f) for f in burst] == [[f"text/True/t{i}"] for i in range(24)]
    results(blocker)


def test_a_request_beyond_the_budget_is_refused_at_once_with_retry_after_from_the_estimate(make_batcher, recorder):
    batcher, blocker = held_with_costs(make_batcher, recorder, 3.0, text=0.125, image=1.5)
    queued = batcher.submit("text", True, [f"t{i}" for i in range(22)])  # 2.75 s queued
    started = time.monotonic()
    with pytest.raises(Overloaded) as image:
        batcher.submit("image", True, ["i"])  # 2.75 + 1.5 > 3: fits once 1.25 s have drained
    assert image.value.retry_after_s == 2
    with pytest.raises(Overloaded) as texts:
        batcher.submit("text", True, ["a", "b", "c"])  # 2.75 + 0.375 > 3: fits after 0.125 s
    assert texts.value.retry_after_s == 1
    assert time.monotonic() - started < 0.5  # refused at once, not after waiting
    assert batcher.health().queue_depth == 22  # nothing of the refused requests was queued
    two = batcher.submit("text", True, ["x", "y"])  # 2.75 + 0.25 = 3.0: taken
    recorder.gate.set()
    assert len(results(queued)) == 22 and results(two) == ["text/True/x", "text/True/y"]
    results(blocker)


def test_an_image_weighs_its_cost_not_one_item(make_batcher, recorder):
    """The count bound would take both; by cost, eight queued images leave no room for a ninth."""
    batcher, blocker = held_with_costs(make_batcher, recorder, 4.0, text=0.0625, image=0.5)
    images = batcher.submit("image", True, [f"i{i}" for i in range(8)])   # 4.0 s: the budget
    with pytest.raises(Overloaded):
        batcher.submit("image", True, ["one more"])
    with pytest.raises(Overloaded):
        batcher.submit("text", True, ["a text"])
    recorder.gate.set()
    assert len(results(images)) == 8
    results(blocker)


def test_each_model_has_its_own_cost(make_batcher, recorder):
    batcher = make_batcher(max_queue_wait_s=2.0, queue_size=1000)
    batcher.costs.observe("big", "text", 1.0, 1)
    batcher.costs.observe("small", "text", 0.125, 1)
    recorder.hold()
    blocker = batcher.submit("warmup", True, ["blocker"])
    assert recorder.entered.wait(WAIT)
    small = batcher.submit("text", "small", [f"s{i}" for i in range(8)], lane="small")   # 1.0 s
    big = batcher.submit("text", "big", ["b"], lane="big")                               # + 1.0 s = 2.0
    with pytest.raises(Overloaded):
        batcher.submit("text", "small", ["one more"], lane="small")
    recorder.gate.set()
    assert len(results(small)) == 8 and len(results(big)) == 1
    results(blocker)


def test_a_request_alone_is_taken_whatever_its_cost_and_unknown_costs_count_as_free(make_batcher, recorder):
    batcher = make_batcher(max_queue_wait_s=1.0, queue_size=1000)
    batcher.costs.observe(None, "image", 2.0, 1)
    alone = batcher.submit("image", True, ["i0", "i1"])  # 4 s of work, nothing ahead: refusing would not help
    assert len(results(alone)) == 2
    recorder.hold()
    blocker = batcher.submit("warmup", True, ["blocker"])
    assert recorder.entered.wait(WAIT)
    unknown = batcher.submit("text", True, [f"t{i}" for i in range(50)])  # texts not measured yet: the count bound
    recorder.gate.set()
    assert len(results(unknown)) == 50
    results(blocker)


def test_the_cost_model_follows_the_measured_batches(make_batcher):
    def slow(kind, options, payloads):
        time.sleep(0.02 * len(payloads))
        return payloads

    batcher = Batcher(slow, max_wait_s=0.0, max_queue_wait_s=5.0)
    batcher.start()
    try:
        for size in (1, 4, 2):
            results(batcher.submit("text", True, list(range(size))))
        assert 0.02 <= batcher.costs.per_item(None, "text") < 0.03
        assert batcher.costs.per_item(None, "image") == 0.0
        assert batcher.health().expected_wait_s == 0.0
    finally:
        batcher.shutdown()
