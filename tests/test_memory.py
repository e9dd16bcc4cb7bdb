"""node/memory.py: the node's glibc malloc settings."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from node import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_settings_go_to_mallopt_in_order():
    calls = []

    def mallopt(parameter, value):
        calls.append((parameter, value))
        return 1

    assert memory.tune_malloc({}, lambda: mallopt) == "tuned"
    assert calls == [
        (memory.M_MMAP_THRESHOLD, 8 << 20),
        (memory.M_TRIM_THRESHOLD, 64 << 20),
        (memory.M_TOP_PAD, 16 << 20),
    ]


@pytest.mark.parametrize("name", memory.USER_SETTINGS)
def test_a_users_own_glibc_setting_is_kept(name):
    def loader():
        raise AssertionError("mallopt must not be loaded when the user set glibc's variables")

    assert memory.tune_malloc({name: "131072"}, loader) == "user settings kept"


def test_other_c_libraries_are_left_alone():
    assert memory.tune_malloc({}, lambda: None) == "not glibc"


def test_a_refused_setting_stops_and_says_so(caplog):
    calls = []

    def mallopt(parameter, value):
        calls.append(parameter)
        return 0

    assert memory.tune_malloc({}, lambda: mallopt) == "mallopt refused"
    assert calls == [memory.M_MMAP_THRESHOLD]
    assert "mallopt" in caplog.text


PROBE = textwrap.dedent(
    """
    import ctypes, sys
    sys.path.insert(0, {root!r})
    from node import memory
    if sys.argv[1] == "tune":
        print(memory.tune_malloc({{}}))
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    before = libc.mallinfo2().hblkhd
    buffer = bytearray(4 << 20)  # a 4 MB answer
    print("mmapped", libc.mallinfo2().hblkhd - before)
    del buffer
    arena = libc.mallinfo2().arena
    print("heap kept", arena)
    """
)


def _probe(mode: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=ROOT), mode],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k not in memory.USER_SETTINGS},
    ).stdout.splitlines()
    lines = dict(line.rsplit(" ", 1) for line in out if " " in line)
    lines["result"] = out[0] if mode == "tune" else ""
    return lines


def test_real_glibc_takes_a_4_mb_buffer_from_the_heap_once_tuned():
    plain = _probe("plain")
    tuned = _probe("tune")
    assert tuned["result"] == "tuned"
    # Untuned, glibc maps a 4 MB buffer on its own pages (and unmaps it on free) ...
    assert int(plain["mmapped"]) >= 4 << 20
    # ... tuned, it comes from the heap, which keeps it after the free.
    assert int(tuned["mmapped"]) == 0
    assert int(tuned["heap kept"]) >= 4 << 20
