"""The Python bindings against a real tern-server: messaging, statuses, history,
unread counts, errors and clean shutdown."""

import gc
import subprocess
import sys
import textwrap
import time

import pytest

import tern
from conftest import ROOT


def is_status(local_id, cls):
    return lambda e: (isinstance(e, tern.TernEvent.MESSAGE_STATUS_CHANGED)
                      and e.local_id == local_id and isinstance(e.status, cls))


def test_two_clients_exchange_messages_with_statuses(make_client):
    alice, alice_events = make_client("alice")
    bob, bob_events = make_client("bob")

    sent = alice.send_text("bob", "hello from python")
    assert isinstance(sent.status, tern.MessageStatus.PENDING)
    assert sent.outgoing and sent.text == "hello from python" and len(sent.client_msg_id) == 32

    got = bob_events.wait_for(lambda e: isinstance(e, tern.TernEvent.MESSAGE_RECEIVED))[0].message
    assert (got.sender, got.text, got.seq) == ("alice", "hello from python", 1)
    assert got.client_msg_id == sent.client_msg_id

    alice_events.wait_for(is_status(sent.local_id, tern.MessageStatus.SENT))
    alice_events.wait_for(is_status(sent.local_id, tern.MessageStatus.DELIVERED))

    reply = bob.send_text("alice", "hi alice")
    alice_events.wait_for(lambda e: isinstance(e, tern.TernEvent.MESSAGE_RECEIVED) and e.message.text == "hi alice")
    bob_events.wait_for(is_status(reply.local_id, tern.MessageStatus.SENT))

    history = alice.messages(tern.ConversationKind.DIRECT, "bob", None, 10)
    assert [m.text for m in reversed(history)] == ["hello from python", "hi alice"], "newest first"


def test_history_paging_and_unread_counts(make_client):
    alice, _ = make_client("alice")
    bob, bob_events = make_client("bob")
    for i in range(1, 26):
        alice.send_text("bob", f"m{i}")
    bob_events.wait_for(lambda e: isinstance(e, tern.TernEvent.MESSAGE_RECEIVED) and e.message.text == "m25")

    convs = bob.conversations()
    assert [(c.id, c.unread) for c in convs] == [("alice", 25)]
    assert convs[0].last_message.text == "m25"

    page1 = bob.messages(tern.ConversationKind.DIRECT, "alice", None, 10)
    page2 = bob.messages(tern.ConversationKind.DIRECT, "alice", page1[-1].local_id, 10)
    page3 = bob.messages(tern.ConversationKind.DIRECT, "alice", page2[-1].local_id, 10)
    texts = [m.text for m in reversed(page1 + page2 + page3)]
    assert texts == [f"m{i}" for i in range(1, 26)]
    assert len(page3) == 5

    bob.mark_read(tern.ConversationKind.DIRECT, "alice")
    assert bob.conversations()[0].unread == 0
    assert bob.sync_cursor() == 25


def test_errors_are_typed(make_client, server, tmp_path):
    alice, _ = make_client("alice")
    with pytest.raises(tern.TernError.InvalidArgument):
        alice.send_text("not a valid id!", "x")
    with pytest.raises(tern.TernError.MessageTooLarge):
        alice.send("bob", 7, b"x" * 100_000)
    with pytest.raises(tern.TernError.AlreadyLoggedIn):
        alice.login("alice", "t")

    fresh = tern.TernClient(tern.ClientSettings(
        server=server.addr, ca_pem=open(server.cert).read(), data_dir=str(tmp_path / "fresh"),
        device_id="d", platform=tern.Platform.ANDROID, client_version="1"))
    with pytest.raises(tern.TernError.NotLoggedIn):
        fresh.conversations()
    rec = __import__("conftest").Recorder()
    fresh.set_listener(rec)
    fresh.login("mallory", "forged-token")
    failed = rec.wait_for(lambda e: isinstance(e, tern.TernEvent.CONNECTION_STATE_CHANGED)
                          and isinstance(e.state, tern.ConnectionState.LOGIN_FAILED))[0]
    assert failed.state.code == "BAD_TOKEN"
    fresh.shutdown()


def test_shutdown_is_clean_and_no_callback_follows(make_client):
    alice, _ = make_client("alice")
    bob, bob_events = make_client("bob")
    started = time.monotonic()
    bob.shutdown()
    assert time.monotonic() - started < 2.0
    seen = len(bob_events.events)
    alice.send_text("bob", "after shutdown")
    time.sleep(0.5)
    assert len(bob_events.events) == seen, "no callback after shutdown returned"
    bob.shutdown()  # idempotent
    del bob
    gc.collect()


def test_interpreter_exit_after_shutdown_is_clean(server, tmp_path):
    """A script that logs in, receives callbacks, shuts down and exits: exit code 0
    (a callback into an exiting interpreter would abort with 134)."""
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT / "ffi" / "python")!r})
        import tern
        done = threading.Event()
        class L(tern.TernListener):
            def on_event(self, e):
                if isinstance(e, tern.TernEvent.CONNECTION_STATE_CHANGED) and isinstance(e.state, tern.ConnectionState.CONNECTED):
                    done.set()
        c = tern.TernClient(tern.ClientSettings(server={server.addr!r}, ca_pem=open({server.cert!r}).read(),
            data_dir={str(tmp_path / "exit")!r}, device_id="d", platform=tern.Platform.WEB, client_version="1"))
        c.set_listener(L())
        c.login("carol", {server.token("carol")!r})
        assert done.wait(20)
        c.send_text("alice", "bye")
        c.shutdown()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
