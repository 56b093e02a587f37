"""benchmarks/nih_scale.py's measurements: CPU and memory of the whole process tree, per-image marks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.nih_scale import TreeMemory, marks_from, tree_cpu_seconds

#: A child that holds 300 MiB of written pages and burns ~0.6 s of CPU, then waits to be told to exit.
CHILD = (
    "import sys, time\n"
    "block = bytearray(300 * 2**20)\n"
    "block[:: 4096] = b'x' * len(block[:: 4096])\n"
    "end = time.process_time() + 0.6\n"
    "while time.process_time() < end: pass\n"
    "print('ready', flush=True); sys.stdin.readline()\n"
)


def test_a_child_process_counts_in_the_tree_memory_and_cpu() -> None:
    memory = TreeMemory(every_s=0.05)
    memory.sample()
    alone = memory.peak_pss
    cpu0 = tree_cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        memory.sample()
        assert memory.peak_pss - alone > 290 * 2**20 and memory.peak_rss >= memory.peak_pss
        assert tree_cpu_seconds() - cpu0 >= 0.55  # the live child's CPU
    finally:
        child.stdin.write("\n")
        child.stdin.close()
        child.wait()
    assert tree_cpu_seconds() - cpu0 >= 0.55  # still counted once the child is reaped


def test_per_image_marks_are_cumulative_times_at_the_first_count_reaching_each_mark() -> None:
    t0 = 100.0
    done_at = {4_000: 101.0, 10_000: 102.0, 30_000: 104.0, 50_000: 106.0, 112_120: 111.212}
    marks = marks_from(done_at, t0, 112_120)
    assert marks == pytest.approx({"10k": 2e3 / 10_000, "50k": 6e3 / 50_000, "all": 11.212e3 / 112_120})
    assert marks_from({600: 100.6}, t0, 600) == pytest.approx(
        {"all": 1.0}
    )  # a small run has no 10k / 50k marks
