"""finetune_core.resources: the cores, threads and memory one run may take, and the
cache sizes a config may ask for (issue 14 item 4). Limits are tried on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from finetune_core import resources
from finetune_core.resources import (
    MAX_FEATURE_ROWS,
    ResourceError,
    apply_memory_limit,
    cache_problems,
    cores_for_run,
    memory_limit_bytes,
    parse_size,
    run_threads,
)


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_run_threads_uses_what_was_asked_never_more_than_allowed() -> None:
    assert run_threads(0, 4) == (4, "")  # 0 = every allowed core
    assert run_threads(3, 4) == (3, "")
    assert run_threads(4, 4) == (4, "")
    threads, note = run_threads(100_000, 4)
    assert threads == 4
    assert note == "num_threads 100000 is more than the 4 cores this run may use: using 4 threads."
    assert run_threads(1_000_000, 0) == (1, run_threads(1_000_000, 1)[1])  # at least one


def test_cores_for_run_divides_this_process_affinity_between_the_slots() -> None:
    cores = len(os.sched_getaffinity(0))
    assert resources.available_cores() == cores
    assert cores_for_run(1) == cores
    assert cores_for_run(2) == max(1, cores // 2)
    assert cores_for_run(1000) == 1
    assert cores_for_run(0) == cores  # a nonsense slot count is one slot


def test_cores_follow_a_narrowed_affinity_in_a_real_process() -> None:
    proc = python(
        """
        import os
        from finetune_core.resources import cores_for_run, run_threads
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(cores_for_run(1), run_threads(100000, cores_for_run(1))[0])
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "1"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8G", 8 * 2**30),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        (" 2 GB ", 2 * 2**30),
        ("1073741824", 2**30),
        ("", None),
        ("   ", None),
    ],
)
def test_sizes_parse(text: str, expected: int | None) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("junk", ["lots", "8 gigs", "-1G", "1e9", "8G8", "nan", "∞"])
def test_junk_memory_limits_are_refused_naming_the_variable(junk: str) -> None:
    with pytest.raises(ResourceError) as caught:
        memory_limit_bytes({"FINETUNE_RUN_MEMORY_LIMIT": junk})
    message = str(caught.value)
    assert message.startswith("FINETUNE_RUN_MEMORY_LIMIT must be a size such as 8G or 512M")
    assert repr(junk) in message


def test_memory_limit_from_the_environment() -> None:
    assert memory_limit_bytes({}) is None
    assert memory_limit_bytes({"FINETUNE_RUN_MEMORY_LIMIT": ""}) is None
    assert memory_limit_bytes({"FINETUNE_RUN_MEMORY_LIMIT": "8G"}) == 8 * 2**30
    with pytest.raises(ResourceError, match="too little for a training process"):
        memory_limit_bytes({"FINETUNE_RUN_MEMORY_LIMIT": "10M"})


ALLOCATE = """
import os, sys
from finetune_core.resources import apply_memory_limit, memory_limit_bytes
import numpy, torch  # loaded before the limit, as in a run process
apply_memory_limit(memory_limit_bytes())
small = bytearray(64 * 2**20)  # well under the limit: fine
results = []
for name, allocate in (
    ("bytearray", lambda: bytearray(2 * 2**30)),
    ("numpy", lambda: numpy.ones(2 * 2**30, dtype=numpy.uint8)),
    ("torch", lambda: torch.ones(2 * 2**30, dtype=torch.uint8)),
    ("many_small", lambda: [bytearray(2**20) for _ in range(2048)]),
):
    try:
        kept = allocate()
        results.append(name + ":allocated")
        del kept
    except MemoryError:
        results.append(name + ":MemoryError")
    except RuntimeError as exc:
        results.append(name + (":refused" if "can't allocate" in str(exc) else ":" + str(exc)))
print(" ".join(results))
"""


def test_the_memory_limit_stops_a_real_process_allocating_too_much() -> None:
    env = {**os.environ, "FINETUNE_RUN_MEMORY_LIMIT": "1G"}
    proc = subprocess.run(
        [sys.executable, "-c", ALLOCATE], capture_output=True, text=True, timeout=120, env=env,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [
        "bytearray:MemoryError", "numpy:MemoryError", "torch:refused", "many_small:MemoryError",
    ]  # fmt: skip
    # Without the variable, the same process allocates 2 GiB as usual (no limit applied).
    env.pop("FINETUNE_RUN_MEMORY_LIMIT")
    script = ALLOCATE.split("results = []")[0] + "x = bytearray(2 * 2**30)\nprint('ok')\n"
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
        check=False,
    )  # fmt: skip
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_apply_memory_limit_never_raises_above_the_hard_limit() -> None:
    proc = python(
        """
        import resource
        from finetune_core.resources import MEMORY_RLIMIT, apply_memory_limit
        resource.setrlimit(MEMORY_RLIMIT, (2**31, 2**31))
        apply_memory_limit(2**33)
        print(*resource.getrlimit(MEMORY_RLIMIT))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(2**31), str(2**31)]
    apply_memory_limit(None)  # no limit asked: nothing changes (in this process too)


def test_feature_and_image_caches_are_bounded_naming_both_numbers() -> None:
    found = cache_problems(
        train_images=100_000, cached_images=120_000, image_size=64, views=32, probe=True
    )
    assert found == [
        (
            "probe_views",
            "100,000 training images x 32 augmented views make 3,200,000 cached feature "
            f"vectors, more than the {MAX_FEATURE_ROWS:,} allowed: choose fewer views per image.",
        )
    ]
    assert cache_problems(
        train_images=100_000, cached_images=120_000, image_size=64, views=32, probe=False
    ) == []  # fmt: skip
    assert (
        cache_problems(
            train_images=31_250, cached_images=40_000, image_size=64, views=32, probe=True
        )
        == []
    )  # fmt: skip  (exactly 1,000,000)
    [(name, message)] = cache_problems(
        train_images=25_000, cached_images=30_000, image_size=1024, views=1, probe=False
    )
    assert name == "image_size"
    assert message.startswith("30,000 images at 1024 px make a decoded image cache of 88 GiB")
