"""The simulated device's Python side: ``pypool.simdevice`` and ``python -m pypool simdevice``.

Bad input gets one clear line (CLI) or a typed error naming the argument (API), never a
traceback or a crash. No torch: the control panel is driven in a child Python that loads
the driver stand-in with ctypes (a child, so that no libcuda.so.1 stays loaded here).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from pypool import simdevice

pytestmark = pytest.mark.skipif(not simdevice.available(), reason="pypool built without the simulated device")


def cli(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "pypool", "simdevice", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def one_line(r: subprocess.CompletedProcess, rc: int, text: str) -> None:
    assert r.returncode == rc, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and text in lines[-1], r.stderr


@pytest.mark.parametrize("args, text", [
    ([], "no command given"),
    (["--"], "no command given"),
    (["--devices", "0", "--", "true"], "devices must be an int in 1..16, got 0"),
    (["--devices", "17", "--", "true"], "devices must be an int in 1..16, got 17"),
    (["--devices", "abc", "--", "true"], "argument --devices: invalid int value: 'abc'"),
    (["--memory", "-1", "--", "true"], "memory: cannot parse size '-1'"),
    (["--memory", "abc", "--", "true"], "memory: cannot parse size 'abc'"),
    (["--memory", "0", "--", "true"], "memory must be a positive size"),
    (["--memory", "20EiB", "--", "true"], "memory"),
    (["--memory", str(2**64), "--", "true"], "memory must be below 2**64 bytes"),
    (["--event-delay-us", "-5", "--", "true"], "event_delay_us must be an int in 0.."),
])
def test_cli_bad_options_are_one_line(args: List[str], text: str) -> None:
    one_line(cli(*args), 2, text)


def test_cli_commands_that_cannot_run_are_one_line(tmp_path: Path) -> None:
    # Exit status as a shell gives it: 127 for no such command, 126 for one that is there
    # but cannot run (not executable, a directory, no "#!" line, a missing interpreter);
    # these once ended in os.execve's traceback.
    one_line(cli("--", "no-such-command-pypool"), 127, "command not found: no-such-command-pypool")
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    one_line(cli("--", str(plain)), 126, "is not executable")
    one_line(cli("--", str(tmp_path)), 126, "is a directory")
    for name, body, text in (("noshebang.sh", "echo hi\n", "Exec format error"),
                             ("badinterp.sh", "#!/nonexistent/interpreter\n", "interpreter (the #! line) was not found")):
        script = tmp_path / name
        script.write_text(body)
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        one_line(cli("--", str(script)), 126, text)


def test_cli_runs_the_command_in_the_simulation_environment() -> None:
    r = cli("--devices", "3", "--memory", "40GB", "--", sys.executable, "-c",
            "import os; print(os.environ['PYPOOL_SIM_DEVICES'], os.environ['PYPOOL_SIM_MEMORY'])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", str(40 * 1000**3)]


@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(devices="2"), ValueError, "devices must be an int in 1..16"),
    (dict(devices=True), ValueError, "devices must be an int in 1..16"),
    (dict(memory=1.5), TypeError, "memory"),
    (dict(memory=None), TypeError, "memory"),
    (dict(memory=-1), ValueError, "memory must be a positive size"),
    (dict(memory=2**64), ValueError, "memory must be below 2\\*\\*64 bytes"),
    (dict(memory="16EiB"), ValueError, "memory"),
    (dict(event_delay_us=2**62), ValueError, "event_delay_us must be an int in 0.."),
    (dict(event_delay_us=1.5), ValueError, "event_delay_us"),
    (dict(quiet="no"), TypeError, "quiet must be a bool"),
    (dict(base=5), TypeError, "base must be a mapping of str to str"),
    (dict(base={"A": 1}), TypeError, "base must map str to str; 'A' does not"),
])
def test_environ_refuses_bad_arguments(kwargs: Dict[str, Any], exc: type, text: str) -> None:
    with pytest.raises(exc, match=text):
        simdevice.environ(**kwargs)


def test_environ_gives_every_device_the_memory_asked_for() -> None:
    # A parent on the simulated device may carry per-device sizes; a child asked for
    # "2GiB" devices gets 2 GiB devices, not the parent's.
    env = simdevice.environ(devices=2, memory="2GiB", base={"PATH": "/bin", "PYPOOL_SIM_MEMORY_0": "1GiB",
                                                           "LD_AUDIT": "/x/other.so"})
    assert env["PYPOOL_SIM_MEMORY"] == str(2 << 30) and "PYPOOL_SIM_MEMORY_0" not in env
    assert env["LD_AUDIT"].split(":") == [str(simdevice.lib_dir() / simdevice.AUDIT_LIB), "/x/other.so"]
    assert env["PATH"] == "/bin"


def test_control_outside_the_simulation_says_how_to_start_it() -> None:
    r = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent("""
        from pypool import simdevice
        assert not simdevice.active()
        try:
            simdevice.control()
        except simdevice.SimDeviceError as e:
            print("refused:", e)
    """)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "python -m pypool simdevice -- CMD" in r.stdout


def test_control_panel_refuses_bad_arguments_without_crashing() -> None:
    # An unknown stream reached the device's state and crashed the process (SIGSEGV); a
    # negative size or one past 2**64 wrapped to a 16 EiB or a 0-byte device; a count past
    # an int was truncated to "no failures".
    script = textwrap.dedent("""
        import ctypes, re
        from pypool import simdevice
        ctl = simdevice.SimControl(ctypes.CDLL(str(simdevice.lib_dir() / simdevice.DRIVER_LIB)))
        total = ctl.total(0)
        def refused(call, exc, text):
            try:
                call()
            except exc as e:
                assert re.search(text, str(e)), (text, str(e))
            else:
                raise AssertionError(f"not refused: {text}")
        for stream in (0x1234, 2**64 - 1):
            refused(lambda: ctl.hold_stream(stream), ValueError, "no such stream")
            refused(lambda: ctl.complete_stream(stream), ValueError, "no such stream")
            refused(lambda: ctl.pending_work(stream), ValueError, "unknown stream")
        refused(lambda: ctl.hold_stream(-1), ValueError, "stream must be in 0..")
        refused(lambda: ctl.hold_stream("x"), TypeError, "stream must be an int")
        refused(lambda: ctl.total("0"), TypeError, "device must be an int")
        refused(lambda: ctl.used(5), ValueError, "device 5 out of range")
        for bad in (-1, 0, 2**64):
            refused(lambda: ctl.set_memory(0, bad), ValueError, "nbytes must be in 1..")
        refused(lambda: ctl.set_memory(0, "1GiB"), TypeError, "nbytes must be an int")
        refused(lambda: ctl.fail_next_allocs(2**40), ValueError, "n must be in 0..")
        refused(lambda: ctl.set_event_delay_us(2**62), ValueError, "us must be in 0..")
        refused(lambda: ctl.calls(5), TypeError, "name must be a str or None")
        assert ctl.total(0) == total and ctl.pending_work(0) == 0
        ctl.set_memory(0, 1 << 30)
        assert ctl.total(0) == 1 << 30
        print("OK")
    """)
    env = dict(os.environ, PYPOOL_SIM_QUIET="1")
    r = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "OK", (r.returncode, r.stdout, r.stderr)
