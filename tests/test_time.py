"""Consistent Time (ITI-1) against a real chronyd serving NTP on a loopback port (its own
configuration in a temporary folder; it never touches the system clock: -x)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import free_port, run_cli
from ihecli.ct import maintain_time, parse_server
from ihecli.errors import PeerUnreachable, UsageError

CHRONYD = "/usr/sbin/chronyd"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chronyd(tmp_path_factory):
    assert Path(CHRONYD).exists(), "chronyd is missing: make test installs chrony"
    d = tmp_path_factory.mktemp("chrony")
    port = _free_udp_port()
    (d / "chrony.conf").write_text(f"""port {port}
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 10
cmdport 0
pidfile {d}/chronyd.pid
driftfile {d}/drift
""")
    p = subprocess.Popen([CHRONYD, "-f", str(d / "chrony.conf"), "-d", "-x"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    server = f"127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                maintain_time(server, timeout=0.2)
                break
            except PeerUnreachable:
                time.sleep(0.05)
        yield server
    finally:
        p.terminate()
        p.wait(10)


def test_maintain_time_against_chronyd(chronyd):
    r = maintain_time(chronyd, max_offset=1.0)
    assert r.stratum == 10 and r.ok
    assert abs(r.offset) < 0.5 and 0 <= r.delay < 0.5
    assert r.server == chronyd


def test_cli_check_within_and_beyond_tolerance(chronyd):
    r = run_cli("time", "check", "--server", chronyd, "--json")
    assert r.code == 0, r.stderr
    assert r.json["stratum"] == 10 and r.json["ok"] is True and abs(r.json["offset"]) < 0.5
    r = run_cli("time", "check", "--server", chronyd)
    assert r.code == 0 and "offset" in r.stdout and "delay" in r.stdout and " ms" in r.stdout
    # no clock agrees with chronyd's to the nanosecond
    r = run_cli("time", "check", "--server", chronyd, "--max-offset", "0s")
    assert r.code == 1 and "ms off, more than the 0 ms allowed" in r.stderr


def test_time_server_from_the_profile(chronyd, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[time]\nserver = "{chronyd}"\nmax_offset = 0.75\n')
    r = run_cli("--config", str(cfg), "time", "check", "--json")
    assert r.code == 0 and r.json["max_offset"] == 0.75


def test_unreachable_and_bad_input():
    r = run_cli("time", "check", "--server", f"127.0.0.1:{_free_udp_port()}", "--timeout", "0.3")
    assert r.code == 4 and "did not answer in 0.3 s" in r.stderr
    r = run_cli("time", "check", "--server", "no-such-host.invalid")
    assert r.code == 4 and r.stderr.strip().endswith("no-such-host.invalid:123: host name not found"), r.stderr
    assert run_cli("time", "check").code == 2
    assert run_cli("time", "check", "--server", "a:b:c:d:x:1:2:3:4", "--max-offset", "soon").code == 2
    with pytest.raises(UsageError):
        parse_server("host:99999")
    assert parse_server("[::1]:1234") == ("::1", 1234) and parse_server("ntp.example.org") == ("ntp.example.org", 123)


def test_a_port_without_ntp_is_unreachable():
    # a TCP port number, nothing on UDP: no answer within the timeout
    with pytest.raises(PeerUnreachable):
        maintain_time(f"127.0.0.1:{free_port()}", timeout=0.3)
