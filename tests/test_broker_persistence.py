"""Crash safety of the saved sessions: kill -9 and restart, a state file of another dataset,
hostile and corrupt files, an unwritable state directory, a full disk, and saving that stays cheap."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from broker_client import command
from control_support import start_control
from processes import wait_for

SPEED = 4                                  # 160 packets/s: 2 s of positions = 320 packets


def _state_lines(proc) -> list[str]:
    return [line for line in proc.output().splitlines() if "state file" in line or "session state" in line]


def _alive_at(path: Path) -> float:
    """The alive record's time (Unix s), 0 while there is none."""
    try:
        return json.loads(path.read_text())["alive_at"]
    except (OSError, ValueError, KeyError):
        return 0.0


def _valid_state(start_broker, path: Path) -> dict:
    """A real state file with two sessions, written by a broker on this dataset."""
    proc = start_broker(PHANTOM_STATE_PATH=str(path))
    command(proc, "create", code="kept", paused=True)
    command(proc, "seek", code="kept", packet_id=1234)
    command(proc, "create", code="also-kept", speed=2)
    assert proc.stop(signal.SIGTERM) == 0
    return json.loads(path.read_text())


def test_after_kill_9_sequence_numbers_never_repeat_and_position_is_recent(start_broker, clients, tmp_path):
    state = tmp_path / "state.json"
    first = start_broker(PHANTOM_STATE_PATH=str(state))
    c = clients(first)
    c.call("create", code="crashy", speed=SPEED)
    sub = c.session("crashy")
    seen = sub.packets("crashy", int(3.5 * SPEED * 40), timeout=10)     # past an alive record
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(5)
    killed_at = time.time()
    last_seq = max(p["sequence_number"] for p in seen)
    last_packet = seen[-1]["packet_id"]

    second = start_broker(PHANTOM_STATE_PATH=str(state))
    c2 = clients(second)
    restored = c2.call("get", code="crashy")
    assert restored["restored"] is not None
    assert restored["restored"]["sequence_resumed"] > last_seq
    rewound = last_packet - restored["current_packet"]
    # positions resume at most one alive period (2 s) back, plus the time this test took to kill
    assert 0 <= rewound <= (2.0 + 0.5) * SPEED * 40, rewound
    assert restored["restored"]["positions_as_of"] >= killed_at - 2.5
    after = c2.session("crashy").packets("crashy", 5)
    assert min(p["sequence_number"] for p in after) > last_seq
    assert "restored 1 sessions" in second.output()


def test_a_state_file_of_another_dataset_is_set_aside_not_clamped(start_broker, clients, tmp_path):
    state = tmp_path / "state.json"
    data = _valid_state(start_broker, state)
    data["dataset"] = dict(data["dataset"], content_key="0123456789abcdef", bins=999_999)
    state.write_text(json.dumps(data))
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    c = clients(proc)
    assert c.call("list")["sessions"] == []
    lines = _state_lines(proc)
    assert len(lines) == 1 and "another dataset" in lines[0] and "none of its 2 sessions" in lines[0]
    assert not state.exists() and (tmp_path / "state.json.other-dataset").exists()
    status = c.call("ping")["state"]
    assert status["ok"] is False and "another dataset" in status["restore"]["problem"]


def test_hostile_entries_are_skipped_with_one_line_and_the_file_set_aside(start_broker, clients, tmp_path):
    state = tmp_path / "state.json"
    data = _valid_state(start_broker, state)
    good = [e for e in data["sessions"] if e["code"] == "kept"][0]
    hostile = [dict(good, code="huge", next_tick="__HUGE__"), dict(good, code="typed", speed="fast"),
               {k: v for k, v in good.items() if k != "code"}, dict(good, code="neg", anchor_pos=-3),
               dict(good, code="nan", anchor_wall="__NAN__"), "not a session",
               dict(good, code="stopped", speed=0), dict(good, code="far", anchor_wall=1e300)]
    text = json.dumps(dict(data, sessions=[good, *hostile]))
    state.write_text(text.replace('"__HUGE__"', "1e400").replace('"__NAN__"', "NaN"))
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    c = clients(proc)
    assert [s["code"] for s in c.call("list")["sessions"]] == ["kept"]
    assert c.call("get", code="kept")["current_packet"] == 1234
    lines = _state_lines(proc)
    assert len(lines) == 1 and "8 of 9 sessions invalid" in lines[0], lines
    assert (tmp_path / "state.json.rejected").exists()
    status = c.call("metrics")["state"]
    assert status["ok"] is False and status["restore"]["skipped"] == 8
    # a clean file is written at once, with the valid session only
    wait_for(lambda: state.exists() and "kept" in state.read_text(), 3, "a clean state file")
    assert [s["code"] for s in json.loads(state.read_text())["sessions"]] == ["kept"]
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage", b'{"version": 2, "sessions": 5}', b"[]" * 10,
                                     b"[" * 100_000])
def test_a_corrupt_state_file_is_moved_aside_and_the_broker_starts(start_broker, clients, tmp_path, garbage):
    state = tmp_path / "state.json"
    state.write_bytes(garbage)
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    c = clients(proc)
    assert c.call("list")["sessions"] == []
    assert (tmp_path / "state.json.corrupt").read_bytes() == garbage
    assert len(_state_lines(proc)) == 1
    assert c.call("ping")["state"]["ok"] is False


def test_an_unwritable_state_directory_is_reported_not_fatal(start_broker, clients, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    proc = start_broker(PHANTOM_STATE_PATH=str(blocker / "state.json"))
    c = clients(proc)
    for i in range(3):                         # three separate saves, each failing
        before = c.call("metrics")["state"]["save_failures"]
        c.call("create", code=f"unsaved-{i}")
        wait_for(lambda: c.call("metrics")["state"]["save_failures"] > before, 5,
                 f"a failed save after create {i + 1}")
    assert c.call("ping")["state"]["save_error"]
    status = c.call("metrics")["state"]
    assert status["ok"] is False and status["save_failures"] >= 3
    assert "cannot save session state" in status["save_error"]
    failures = [line for line in proc.output().splitlines() if "cannot save session state" in line]
    assert len(failures) == 1, failures        # one line, not one per attempt
    assert len(c.call("list")["sessions"]) == 3
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_playing_sessions_do_not_rewrite_the_snapshot(start_broker, clients, tmp_path):
    state = tmp_path / "state.json"
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    c = clients(proc)
    for i in range(100):
        c.call("create", code=f"play-{i}")
    wait_for(lambda: state.exists() and json.loads(state.read_text())["sessions"].__len__() == 100, 5,
             "the snapshot of 100 sessions")
    inode = os.stat(state).st_ino
    alive = tmp_path / "state.json.alive"
    wait_for(alive.exists, 4, "the alive record")
    first_alive = _alive_at(alive)
    # two more alive periods pass (each a housekeeping turn that writes the alive record)
    second_alive = wait_for(lambda: _alive_at(alive) > first_alive and _alive_at(alive), 4,
                            "a newer alive record")
    wait_for(lambda: _alive_at(alive) > second_alive, 4, "the alive record after that")
    assert os.stat(state).st_ino == inode, "the whole snapshot was rewritten while nothing changed"
    c.call("pause", code="play-3")
    wait_for(lambda: os.stat(state).st_ino != inode, 3, "a snapshot after a change")


TINY_DISK_BYTES = 256 << 10                # a tmpfs of 64 pages: a few sessions' state file fits
FREE_WHEN_FULL = 16 << 10                  # left after the filler: the alive record fits, 50 sessions do not


@pytest.fixture
def tiny_disk(tmp_path):
    """A real, tiny filesystem (tmpfs) that can be filled up; unmounted at teardown.

    Request it before start_broker, so that the broker is stopped before the unmount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK_BYTES},mode=0700",
                               "tmpfs", str(disk)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command: a full disk needs a tmpfs of its own")
    if done.returncode != 0:
        why = " ".join(done.stderr.split())
        pytest.skip("cannot mount a tmpfs for the full-disk test (needs root or CAP_SYS_ADMIN, "
                    f"e.g. run under `unshare --user --map-root-user --mount`): {why}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on ``disk`` (real pages, not a sparse file)."""
    st = os.statvfs(disk)
    size = st.f_bavail * st.f_frsize - leave
    filler = disk / "filler"
    with open(filler, "wb") as f:
        for start in range(0, size, 1 << 16):
            f.write(b"\xa5" * min(1 << 16, size - start))
    return filler


def _temp_files(disk: Path) -> list[str]:
    return [p.name for p in disk.iterdir() if p.name.endswith(".tmp")]


def _packets_until(sub, code: str, wall: float) -> list[int]:
    """Sequence numbers of ``code``'s packets received up to the first one sent after ``wall``
    (Unix s): the session is still streaming now, not just drained from a queue."""
    seqs: list[int] = []
    while not seqs or sent_at <= wall:
        data = sub.packets(code, 1, timeout=5)[0]
        seqs.append(data["sequence_number"])
        sent_at = data["sent_at"]
    return seqs


def test_a_full_disk_is_reported_once_not_fatal_and_saving_resumes_when_space_is_freed(
        tiny_disk, start_broker, spawn, clients):
    state, alive = tiny_disk / "state.json", tiny_disk / "state.json.alive"
    proc = start_broker(PHANTOM_STATE_PATH=str(state))
    _control, http = start_control(spawn, proc.ready["control"])
    c = clients(proc)
    c.call("create", code="live", speed=1)
    live = c.session("live")
    for i in range(2):
        c.call("create", code=f"few-{i}", paused=True)
    wait_for(lambda: state.exists() and len(json.loads(state.read_text())["sessions"]) == 3, 5,
             "the snapshot of the first 3 sessions")
    assert http.get("/health").json["status"] == "healthy"

    filler = _fill(tiny_disk, FREE_WHEN_FULL)
    codes = {"live", "few-0", "few-1"}
    seqs: list[int] = []
    for batch in range(3):                 # three changes, each saved in a snapshot that does not fit
        before = c.call("metrics")["state"]["save_failures"]
        new = [f"many-{batch}-{i}" for i in range(50)]
        for code in new:
            c.call("create", code=code, paused=True)
        codes.update(new)
        wait_for(lambda: c.call("metrics")["state"]["save_failures"] > before, 5,
                 f"a failed save after batch {batch + 1}")
        failed_at = time.time()
        # the alive record still fits and is written: that alone does not make the state safe
        wait_for(lambda: _alive_at(alive) > failed_at, 5, "an alive record written after the failure")
        status = c.call("metrics")["state"]
        assert status["ok"] is False, status
        assert "No space left on device" in status["save_error"], status
        health = http.get("/health").json
        assert health["status"] == "degraded", health
        assert health["broker"]["reachable"] is True
        assert "No space left on device" in health["broker"]["state"]["save_error"], health

        # the broker keeps answering and streaming meanwhile
        assert {s["code"] for s in c.call("list")["sessions"]} == codes
        seqs += _packets_until(live, "live", time.time())
        assert seqs == sorted(set(seqs)), seqs
        wait_for(lambda: not _temp_files(tiny_disk), 3, "no temporary file left on the full disk")

    saved = {e["code"] for e in json.loads(state.read_text())["sessions"]}
    assert saved < codes                   # what is on disk is the last snapshot that fitted
    failures = [line for line in proc.output().splitlines() if "cannot save session state" in line]
    assert len(failures) == 1, failures    # one line for the failure, not one per attempt
    assert "No space left on device" in failures[0]

    filler.unlink()                        # space again; the test changes nothing else
    wait_for(lambda: {e["code"] for e in json.loads(state.read_text())["sessions"]} == codes, 10,
             "a snapshot of every session once space is free")
    wait_for(lambda: c.call("metrics")["state"]["ok"], 5, "the state reported safe again")
    status = c.call("metrics")["state"]
    assert status["save_error"] is None and status["last_saved_at"] > failed_at, status
    health = http.get("/health").json
    assert health["status"] == "healthy" and health["broker"]["state"]["save_error"] is None, health
    again = [line for line in proc.output().splitlines() if "again" in line and "session state" in line]
    assert len(again) == 1, again
    assert not _temp_files(tiny_disk)
    assert "Traceback" not in proc.output()
    assert proc.stop(signal.SIGTERM) == 0
