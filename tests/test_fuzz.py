"""The quick fuzz subset CI runs: every hostile pickle technique once, fixed-seed mutations of
valid files of every format and of specs, and the generated hostile classes (unresolvable
paths, numbers past the int-string limit, huge and deep specs). Each case runs in its own resource-limited child
process (tests/fuzz/harness.py says what clean means); any unclean case fails with its
verdict. The long campaign is `python -m tests.fuzz.run --cases 5000 --seed N`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.fuzz.campaign import huge_spec_cases, mutation_cases, number_cases, path_cases, pickle_cases, spec_cases
from tests.fuzz.harness import ROOT, Runner
from tests.fuzz.pickles import TECHNIQUES

SEED = 7
FILE_CASES = 150
SPEC_CASES = 60


@pytest.fixture(scope="module")
def runner():
    with Runner() as r:
        yield r


def assert_clean(cases, runner: Runner) -> int:
    verdicts = runner.run_all(cases)
    bad = [v for v in verdicts if not v.clean]
    assert not bad, f"{len(bad)} of {len(verdicts)} cases not clean:\n" + "\n".join(map(str, bad))
    return len(verdicts)


def test_the_corpus_covers_over_100_techniques_with_distinct_names():
    names = [t.name for t in TECHNIQUES]
    assert len(names) == len(set(names)) >= 100


def test_live_payloads_really_run_under_plain_pickle(tmp_path):
    """The corpus is made of working attacks: plain pickle.loads runs the `live` ones (each
    creates its marker here), so mapspec refusing them proves something."""
    code = ("import sys; from pathlib import Path; from tests.fuzz.pickles import live_check; "
            "dead = live_check(Path(sys.argv[1])); print(dead); sys.exit(1 if dead else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("live")]) == sum(t.live for t in TECHNIQUES) >= 50


def test_hostile_pickles_never_run_and_fail_cleanly(tmp_path, runner):
    assert assert_clean(pickle_cases(tmp_path, quick=True), runner) == len(TECHNIQUES)


def test_mutated_checkpoints_of_every_format(tmp_path, runner):
    assert assert_clean(mutation_cases(tmp_path, SEED, FILE_CASES), runner) == FILE_CASES


def test_mutated_specs(tmp_path, runner):
    assert assert_clean(spec_cases(tmp_path, SEED, SPEC_CASES), runner) == SPEC_CASES


def test_unresolvable_paths_in_every_role(tmp_path, runner):
    """Every role x every kind of bad path once (tests/fuzz/hostile.py)."""
    from tests.fuzz.hostile import BADNESS, ROLES

    n = len(ROLES) * len(BADNESS)
    assert assert_clean(path_cases(tmp_path, SEED, n), runner) == n


def test_numbers_past_the_int_string_limit(tmp_path, runner):
    assert assert_clean(number_cases(tmp_path, SEED, 56), runner) == 56


def test_huge_and_deep_specs(tmp_path, runner):
    assert assert_clean(huge_spec_cases(tmp_path, SEED, 12), runner) == 12


# ---------------------------------------------------------------- what the long campaign found

def test_mxnet_names_holding_nul_are_refused(tmp_path):
    """Found by `tests.fuzz.run --seed 43`: mx.nd.load cuts a name at NUL ('\\x07'), mapspec
    kept it whole ('\\x07\\x00\\x00\\x00ids'); the two readings disagreed, so neither is given."""
    import numpy as np

    from mapspec.errors import CheckpointError
    from mapspec.formats import open_sink, open_source
    from mapspec.compile.plan import TensorInfo

    path = tmp_path / "nul.params"
    sink = open_sink(path, "mxnet", {"a\0ids": TensorInfo((2,), "float32")})
    sink.write("a\0ids", np.ones(2, np.float32))
    sink.commit()
    with pytest.raises(CheckpointError, match="name 0 at byte .* holds a NUL character"):
        open_source(path)


def test_the_safetensors_oracle_reads_float8_as_mapspec_holds_it(tmp_path):
    """Found by `tests.fuzz.run --seed 1`: a mutated dtype of F8_E4M3 (a valid file) was taken
    for a file the library refuses, because torch's float8 tensors have no numpy form. The
    oracle reads them as their byte codes, as mapspec does, and the two readings agree."""
    pytest.importorskip("torch")
    import numpy as np

    from mapspec.formats import open_sink
    from mapspec.compile.plan import TensorInfo
    from tests.fuzz.harness import read_output, same_bits
    from tests.fuzz.oracle import _read

    codes = {"w8": np.arange(12, dtype=np.uint8).reshape(3, 4), "e5": np.arange(5, dtype=np.uint8)}
    path = tmp_path / "f8.safetensors"
    sink = open_sink(path, "safetensors", {"w8": TensorInfo((3, 4), "float8_e4m3fn"),
                                           "e5": TensorInfo((5,), "float8_e5m2")})
    for k, a in codes.items():
        sink.write(k, a)
    sink.commit()
    want, got = _read("safetensors", str(path)), read_output(path)
    assert set(want) == set(got) == set(codes)
    for k, a in codes.items():
        assert want[k].dtype == np.uint8 and np.array_equal(want[k], a) and same_bits(got[k], want[k]), k
