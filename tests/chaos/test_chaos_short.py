"""The short form of ``make chaos``, run by ``make test``: a few seeded trials of each kind of fault.

It prints the seed; set ``MIGSAFE_CHAOS_SEED`` to replay one (the full run is ``make chaos``).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faults
from pgsupport import Database


@pytest.mark.slow
def test_a_few_seeded_faults_of_each_kind_break_no_invariant(
    make_database: Callable[..., Database], runtime_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given: a seeded source, and a seed (printed, so a failure is replayed with MIGSAFE_CHAOS_SEED)
    seed = int(os.environ.get("MIGSAFE_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    source = make_database()
    faults.prepare_source(source)
    lab = faults.Lab(source=source, runtime_dir=runtime_dir, work=tmp_path, make_target=make_database)
    lines: list[str] = []
    # When: one kill at a random point of a backup, of one random rehearse phase and of a restore
    # into an empty and into a populated database, per signal; the source server stopped during a
    # backup, the scratch server killed during an upgrade, the source server hung (SIGSTOP) during a
    # backup or a scratch copy (6 to 15 s), a disk too small; five byte flips
    trials = faults.run_trials(lab, seed, per_kind=1, flips=5, phases=1, faults=1, say=lines.append)
    # Then
    report = "\n".join([*lines, faults.table(trials)])
    with capsys.disabled():
        print("\n" + report)
    assert not [t for t in trials if t.broken], report
    # every fault was injected (the disk-full one needs root, to mount a small tmpfs: the tests run as root)
    assert not [t for t in trials if t.unavailable], report
