"""The bin cache: beside the data, keyed by content + bin width + format, never stale, atomic."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time

import h5py
import numpy as np
import pytest

import broker.binning as binning
from broker.binning import FORMAT_VERSION, cache_path, content_key, load_recording
from dataset_files import build
from dataset_files import synthetic_path  # noqa: F401  (session fixture)


@pytest.fixture
def data_copy(tmp_path, synthetic_path):
    """A private copy of the synthetic file, so its cache lands in tmp_path."""
    target = tmp_path / "data" / "mc_maze_small_synthetic.nwb"
    target.parent.mkdir()
    shutil.copyfile(synthetic_path, target)
    return target


def _cache_files(directory):
    return sorted(p.name for p in directory.glob("*.phantom.npz"))


def _equal(a, b) -> None:
    for name in ("unit_ids", "heldout", "counts", "observed", "trial_index", "trial_time_ms",
                 "cursor", "velocity", "target_id", "target_pos", "distance"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    for name in ("name", "path", "content_key", "bin_ms", "t0", "trials", "events", "has_behavior",
                 "velocity_method"):
        assert getattr(a, name) == getattr(b, name), name


def test_miss_then_hit_beside_the_data_file(data_copy, caplog):
    caplog.set_level(logging.INFO, logger="broker.binning")
    cold = load_recording(data_copy, 25)
    key = hashlib.sha256(data_copy.read_bytes()).hexdigest()
    assert cold.content_key == key == content_key(data_copy)
    expected = data_copy.parent / f"mc_maze_small_synthetic.{key[:16]}.25ms.v{FORMAT_VERSION}.phantom.npz"
    assert _cache_files(data_copy.parent) == [expected.name]
    assert not [p for p in data_copy.parent.iterdir() if p.name.startswith(".")], "temp file left"
    assert "cached it in" in caplog.text and "from cache" not in caplog.text
    began = time.monotonic()
    warm = load_recording(data_copy, 25)
    elapsed = time.monotonic() - began
    assert "from cache" in caplog.text
    _equal(cold, warm)
    assert elapsed < 1.0, f"cached load took {elapsed:.2f} s"


def test_bin_width_is_part_of_the_key(data_copy):
    a, b = load_recording(data_copy, 25), load_recording(data_copy, 5)
    assert len(_cache_files(data_copy.parent)) == 2
    assert b.n_bins == 5 * a.n_bins and b.bin_ms == 5


def test_changed_content_never_uses_the_stale_cache(data_copy, caplog):
    caplog.set_level(logging.INFO, logger="broker.binning")
    before = load_recording(data_copy, 25)
    with h5py.File(data_copy, "r+") as h5:             # move unit 0's first spike by 100 ms
        times = h5["/units/spike_times"]
        times[0] = times[0] + 0.1
    after = load_recording(data_copy, 25)
    assert after.content_key != before.content_key
    assert "from cache" not in caplog.text
    assert not np.array_equal(after.counts[:, 0], before.counts[:, 0])
    assert after.counts.sum() == before.counts.sum()
    assert _cache_files(data_copy.parent) == [cache_path(data_copy, after.content_key, 25).name]


def test_cache_with_a_foreign_key_under_the_right_name_is_ignored(tmp_path):
    """Only the full key stored inside the cache counts, not the 16-character name prefix."""
    one = build(tmp_path / "one.nwb")
    (tmp_path / "sub").mkdir()
    two = build(tmp_path / "sub" / "one.nwb")
    with h5py.File(two, "r+") as h5:
        h5["/units/spike_times"][0] = 0.9
    rec_one = load_recording(one, 1, cache_dir=tmp_path / "c")
    cached = cache_path(one, rec_one.content_key, 1, tmp_path / "c")
    key_two = content_key(two)
    (tmp_path / "c2").mkdir()
    shutil.copyfile(cached, cache_path(two, key_two, 1, tmp_path / "c2"))
    rec_two = load_recording(two, 1, cache_dir=tmp_path / "c2")
    assert rec_two.content_key == key_two
    assert rec_two.counts[900, 0] == 1 and rec_one.counts[900, 0] == 0


def test_corrupt_cache_is_rebuilt(data_copy, caplog):
    first = load_recording(data_copy, 25)
    cached = cache_path(data_copy, first.content_key, 25)
    cached.write_bytes(cached.read_bytes()[:1000])
    caplog.set_level(logging.WARNING, logger="broker.binning")
    again = load_recording(data_copy, 25)
    assert "ignoring unreadable bin cache" in caplog.text
    _equal(first, again)
    assert cached.stat().st_size > 1000


def test_unwritable_data_directory_falls_back_to_data_cache(data_copy, tmp_path, monkeypatch):
    fallback = tmp_path / "fallback-cache"
    monkeypatch.setattr(binning, "FALLBACK_CACHE_DIR", fallback)
    directory = data_copy.parent
    with _read_only(directory):
        rec = load_recording(data_copy, 25)
        assert _cache_files(directory) == []
    assert _cache_files(fallback) == [cache_path(data_copy, rec.content_key, 25, fallback).name]


class _read_only:
    """chmod 555, and chattr +i when running as root (root ignores permission bits)."""

    def __init__(self, directory):
        self.directory = directory
        self.immutable = False

    def __enter__(self):
        os.chmod(self.directory, 0o555)
        if os.access(self.directory, os.W_OK) and shutil.which("chattr"):
            result = subprocess.run(["chattr", "+i", str(self.directory)], capture_output=True)
            self.immutable = result.returncode == 0
        probe = self.directory / "probe"
        try:
            probe.touch()
        except OSError:
            return self
        probe.unlink()
        self.__exit__()
        pytest.skip("cannot make a directory read-only here (root without chattr)")

    def __exit__(self, *exc):
        if self.immutable:
            subprocess.run(["chattr", "-i", str(self.directory)], check=True)
        os.chmod(self.directory, 0o755)
