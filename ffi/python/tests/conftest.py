"""Fixtures: a real tern-server process on loopback, and clients on the bindings."""

import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]

# The package under test is the installed one (the wheel: ffi/python-test.sh), never the
# source tree, which has no native library; TERN_PY_EXPECT_PREFIX makes sure of it.
import tern  # noqa: E402

_prefix = os.environ.get("TERN_PY_EXPECT_PREFIX")
if _prefix and not os.path.realpath(tern.__file__).startswith(os.path.realpath(_prefix)):
    raise RuntimeError(f"tern was imported from {tern.__file__}, not from the installed wheel in {_prefix}")


def server_binary() -> str:
    path = os.environ.get("TERN_SERVER_BIN") or str(ROOT / "target" / "debug" / "tern-server")
    if not os.path.exists(path):
        pytest.fail(f"tern-server binary not found at {path}: build it first (cargo build -p tern-server)")
    return path


def store_args() -> list:
    """With TERN_TEST_STORE=postgres, a new scratch database on TERN_TEST_PG's server
    (made with psql) for each server; otherwise nothing (the SQLite store)."""
    if os.environ.get("TERN_TEST_STORE") != "postgres":
        return []
    base = os.environ.get("TERN_TEST_PG")
    if not base:
        pytest.fail("TERN_TEST_STORE=postgres needs TERN_TEST_PG")
    name = f"tern_py_{os.urandom(8).hex()}"
    subprocess.run(["psql", base, "-qc", f"CREATE DATABASE {name}"], check=True)
    parts = urllib.parse.urlsplit(base)
    return ["--store", urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))]


class Server:
    def __init__(self, data: pathlib.Path):
        self.bin = server_binary()
        self.proc = subprocess.Popen(
            [self.bin, "--dev", "--data", str(data), "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0",
             "--rate-per-sec", "10000", "--rate-burst", "10000"] + store_args(),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self.addr = self.cert = None
        for line in self.proc.stdout:
            if line.startswith("quic listening on "):
                self.addr = line.split()[-1]
            if line.startswith("dev certificate: "):
                self.cert = line.split(": ", 1)[1].strip()
                break
        assert self.addr and self.cert, "server did not start"
        # Keep draining stdout so the server never writes into a full or closed pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def token(self, user: str) -> str:
        return subprocess.check_output([self.bin, "token", "--dev", "--user", user], text=True).strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Recorder(tern.TernListener):
    """Collects events; called on the client's event thread."""

    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if predicate(e)]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"event not seen within {timeout}s; got {self.events[-5:]}")
                self.cond.wait(left)

    def received(self):
        with self.cond:
            return [e.message for e in self.events if isinstance(e, tern.TernEvent.MESSAGE_RECEIVED)]


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "server")
    yield s
    s.stop()


@pytest.fixture
def make_client(server, tmp_path):
    clients = []

    def make(user: str, device: str = None, platform=tern.Platform.DESKTOP):
        settings = tern.ClientSettings(
            server=server.addr,
            ca_pem=open(server.cert).read(),
            data_dir=str(tmp_path / f"client-{user}-{device or 'd'}"),
            device_id=device or f"py-{user}",
            platform=platform,
            client_version="1.0.0",
        )
        client = tern.TernClient(settings)
        rec = Recorder()
        client.set_listener(rec)
        client.login(user, server.token(user))
        rec.wait_for(lambda e: isinstance(e, tern.TernEvent.CONNECTION_STATE_CHANGED)
                     and isinstance(e.state, tern.ConnectionState.CONNECTED))
        clients.append(client)
        return client, rec

    yield make
    for c in clients:
        c.shutdown()
