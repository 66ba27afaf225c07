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
    # 25 messages, then the read mark itself: an entry of bob's own timeline.
    wait_until(lambda: bob.sync_cursor() == 26)


def is_received(pred):
    return lambda e: isinstance(e, tern.TernEvent.MESSAGE_RECEIVED) and pred(e.message)


def wait_until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_groups_read_marks_across_devices_and_recall(make_client):
    alice, alice_ev = make_client("alice")
    alice_web, alice_web_ev = make_client("alice", device="web", platform=tern.Platform.WEB)
    bob, bob_ev = make_client("bob")
    carol, carol_ev = make_client("carol")

    g = alice.create_group("py team", ["bob", "carol"])
    assert (g.owner, g.members) == ("alice", ["alice", "bob", "carol"])
    sent = alice.send_group_text(g.id, "standup in 5")
    for ev in (bob_ev, carol_ev):
        got = ev.wait_for(is_received(lambda m: m.text == "standup in 5"))[0].message
        assert (got.kind, got.conversation, got.sender) == (tern.ConversationKind.GROUP, g.id, "alice")
    # The other device of the sender sees it too, as outgoing.
    alice_web_ev.wait_for(is_received(lambda m: m.text == "standup in 5" and m.outgoing))
    bob.mark_read(tern.ConversationKind.GROUP, g.id)
    carol.mark_read(tern.ConversationKind.GROUP, g.id)
    alice_ev.wait_for(lambda e: isinstance(e, tern.TernEvent.MESSAGE_UPDATED)
                      and e.message.local_id == sent.local_id and e.message.read_count == 2)
    assert [x.id for x in carol.groups()] == [g.id]
    big = alice.create_large_group("py town hall", ["bob", "carol"])
    assert big.large and len(big.members) == 3
    alice.send_group_text(big.id, "to everyone")
    for ev in (bob_ev, carol_ev):
        ev.wait_for(is_received(lambda m: m.text == "to everyone" and m.conversation == big.id))
    with pytest.raises(tern.TernError.Refused) as refused:
        bob.remove_group_members(g.id, ["carol"])
    assert "NOT_ALLOWED" in str(refused.value)

    # Read on one device clears the count on the other; the sender sees "read".
    ping = bob.send_text("alice", "ping")
    alice_web_ev.wait_for(is_received(lambda m: m.text == "ping"))
    assert alice_web.total_unread() == 1
    alice.mark_read(tern.ConversationKind.DIRECT, "bob")
    wait_until(lambda: alice_web.total_unread() == 0)
    bob_ev.wait_for(is_status(ping.local_id, tern.MessageStatus.READ))

    # Recall replaces the content on the recipient's device.
    oops = alice.send_text("bob", "wrong window")
    bob_ev.wait_for(is_received(lambda m: m.text == "wrong window"))
    alice_ev.wait_for(is_status(oops.local_id, tern.MessageStatus.SENT))
    alice.recall(oops.local_id)
    bob_ev.wait_for(lambda e: isinstance(e, tern.TernEvent.MESSAGE_UPDATED) and e.message.recalled)

    page = bob.load_history(tern.ConversationKind.DIRECT, "alice", None, 10)
    assert page.at_beginning and [m.recalled for m in page.messages][0]


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
