"""The benchmark's verdicts: a contaminated or noisy bare-encoder ceiling never turns a miss into a pass."""

import os
import subprocess
import sys
import time

import pytest

from bench.accounting import Ceiling, at_batch, tree_cpu_seconds, verdict


def rate(*samples: float) -> Ceiling:
    return Ceiling("images/s batch 16", True, list(samples))


def test_the_reported_case_is_never_a_pass():
    # The run: 86.6 before the servers, 8.6 while they were alive; 43.2 served was called 91%.
    assert verdict(43.2, rate(86.6, 8.6), 0.85).startswith("unsettled")
    assert verdict(43.2, rate(86.6, 8.6, 80.1, 84.0, 85.2), 0.85) == "unsettled (spread 10.07)"


def test_a_slow_sample_within_the_spread_does_not_lower_the_bar():
    # Median 67 would let 60/s pass at 85%; the fastest sample (86) is the ceiling, so it is a miss.
    ceiling = rate(86.0, 67.0, 67.0, 67.0, 80.0)
    assert ceiling.spread < 1.3
    assert verdict(60.0, ceiling, 0.85) == "no"
    assert verdict(73.2, ceiling, 0.85) == "yes"


def test_too_few_samples_are_unsettled_even_when_they_agree():
    assert verdict(100.0, rate(80.0, 80.5, 81.0), 0.85).startswith("unsettled (3 bare samples")


def test_latency_ceiling_uses_the_fastest_sample():
    single = Ceiling("ms one text", False, [16.0, 16.5, 17.0, 16.2, 19.0])
    assert verdict(33.0, single, 2.0) == "no"      # 2 x 16.0 = 32 ms
    assert verdict(31.5, single, 2.0) == "yes"
    assert verdict(20.0, Ceiling("ms one text", False, [16.0, 670.0, 16.1, 16.2, 16.3]), 2.0).startswith("unsettled")


def test_summary_reports_min_median_max():
    s = rate(80.0, 90.0, 85.0, 84.0, 86.0).summary()
    assert (s["min"], s["median"], s["max"], s["n"]) == (80.0, 85.0, 90.0, 5)


def test_per_item_cost_read_between_measured_batch_sizes():
    per_item = {1: 10.0, 2: 8.0, 4: 6.0, 8: 5.0}
    assert at_batch(per_item, 4) == 6.0
    assert at_batch(per_item, 2 ** 1.5) == pytest.approx(7.0)
    assert at_batch(per_item, 0.5) == 10.0 and at_batch(per_item, 64) == 5.0


def test_tree_cpu_counts_children():
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while tree_cpu_seconds(child.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tree_cpu_seconds(child.pid) >= 0.5
        assert tree_cpu_seconds(os.getpid()) >= tree_cpu_seconds(child.pid)  # the parent's tree includes it
    finally:
        child.kill()
        child.wait()
