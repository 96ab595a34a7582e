"""Every flag the jobs share has one name, one default and one help text in every job."""

import itertools

import pytest

from jobs import audit, crop, pairs, restore
from jobs.driver import build_parser

JOBS = {job.JOB.name: job.JOB for job in (restore, audit, pairs, crop)}


def flags(job) -> dict:
    return {a.option_strings[-1]: a for a in build_parser(job)._actions if a.option_strings and a.dest != "help"}


def test_shared_flags_have_one_name_default_and_help():
    by_job = {name: flags(job) for name, job in JOBS.items()}
    shared = 0
    for (a, fa), (b, fb) in itertools.combinations(by_job.items(), 2):
        for option in fa.keys() & fb.keys():
            x, y = fa[option], fb[option]
            shared += 1
            assert (x.default, x.help, x.type, x.choices, x.nargs, type(x)) == (y.default, y.help, y.type, y.choices, y.nargs, type(y)), f"{option}: {a} and {b} differ"
    assert shared > 6 * 20  # every pair of jobs shares the common flags, at least


@pytest.mark.parametrize("option", ["--workers", "--batch-size", "--synthetic-weights", "--device", "--shard-size", "--shared-output", "--threads-per-worker"])
def test_the_flags_every_job_needs_are_in_every_job(option):
    assert all(option in flags(job) for job in JOBS.values())


def test_old_names_are_gone():
    assert not any({"--actors", "--synthetic-detector", "--threads-per-actor"} & flags(job).keys() for job in JOBS.values())
