-- The two writes every message makes, each one round trip: storing a direct message,
-- and a delivery ACK (which returns the DELIVERED receipts' seqs for the caller to
-- write). They replace the statement-by-statement versions in Rust and keep their rules
-- and lock order (src/store/postgres/timeline.rs): device row, then every head row in
-- ascending user id, then rows those heads protect.

CREATE FUNCTION tern_store_direct(
    p_sender text, p_cmid bytea, p_recipient text, p_kind integer, p_content_type bigint,
    p_body bytea, p_client_ts bigint, p_ts bigint, p_device text, p_send_seq bigint,
    p_require_known boolean,
    OUT o_status text, OUT o_id bigint, OUT o_sender_seq bigint, OUT o_recipient_seq bigint,
    OUT o_server_ts bigint, OUT o_expected bigint, OUT o_kind integer, OUT o_recipient text)
LANGUAGE plpgsql AS $$
DECLARE
    v_last bigint;
    v_owners text[];
BEGIN
    -- Idempotency: a message stored before answers with its stored result.
    SELECT m.id, m.sender_seq, m.server_ts, m.kind, m.recipient
      INTO o_id, o_sender_seq, o_server_ts, o_kind, o_recipient
      FROM messages m WHERE m.sender = p_sender AND m.client_msg_id = p_cmid;
    IF FOUND THEN
        o_status := 'duplicate';
        RETURN;
    END IF;
    -- The device's send order, before anything else is judged.
    IF p_send_seq > 0 THEN
        UPDATE devices d SET send_seq = p_send_seq
         WHERE d.uid = p_sender AND d.device = p_device AND d.send_seq = p_send_seq - 1;
        IF NOT FOUND THEN
            IF p_send_seq = 1 THEN
                INSERT INTO devices (uid, device, send_seq) VALUES (p_sender, p_device, 1)
                ON CONFLICT (uid, device) DO NOTHING;
            END IF;
            IF p_send_seq <> 1 OR NOT FOUND THEN
                SELECT d.send_seq INTO v_last FROM devices d
                 WHERE d.uid = p_sender AND d.device = p_device;
                o_status := 'out_of_order';
                o_expected := COALESCE(v_last, 0) + 1;
                RETURN;
            END IF;
        END IF;
    END IF;
    -- A refusal for good keeps the send seq taken (the transaction commits).
    IF p_require_known AND NOT EXISTS (SELECT 1 FROM users u WHERE u.uid = p_recipient) THEN
        o_status := 'unknown_recipient';
        RETURN;
    END IF;
    -- Heads in ascending id order, one statement; then the id.
    v_owners := ARRAY(SELECT DISTINCT o FROM unnest(ARRAY[p_sender, p_recipient]) AS o ORDER BY o);
    WITH bumped AS (
        INSERT INTO users (uid, head_seq) SELECT o, 1 FROM unnest(v_owners) AS o ORDER BY o
        ON CONFLICT (uid) DO UPDATE SET head_seq = users.head_seq + 1
        RETURNING users.uid, users.head_seq)
    SELECT max(b.head_seq) FILTER (WHERE b.uid = p_sender),
           max(b.head_seq) FILTER (WHERE b.uid = p_recipient)
      INTO o_sender_seq, o_recipient_seq FROM bumped b;
    o_server_ts := p_ts;
    INSERT INTO messages (sender, client_msg_id, recipient, kind, content_type, body,
                          client_ts, server_ts, sender_seq)
    VALUES (p_sender, p_cmid, p_recipient, p_kind, p_content_type, p_body,
            p_client_ts, p_ts, o_sender_seq)
    RETURNING messages.id INTO o_id;
    INSERT INTO timeline (uid, seq, conv_kind, conversation, message_id)
    VALUES (p_sender, o_sender_seq, p_kind, p_recipient, o_id);
    INSERT INTO conversations (uid, conv_kind, conversation, latest_seq, unread)
    VALUES (p_sender, p_kind, p_recipient, o_sender_seq, 0)
    ON CONFLICT (uid, conv_kind, conversation) DO UPDATE SET latest_seq = excluded.latest_seq;
    IF p_recipient <> p_sender THEN
        INSERT INTO timeline (uid, seq, conv_kind, conversation, message_id)
        VALUES (p_recipient, o_recipient_seq, p_kind, p_sender, o_id);
        INSERT INTO conversations (uid, conv_kind, conversation, latest_seq, unread)
        VALUES (p_recipient, p_kind, p_sender, o_recipient_seq, 1)
        ON CONFLICT (uid, conv_kind, conversation)
        DO UPDATE SET latest_seq = excluded.latest_seq, unread = conversations.unread + 1;
    END IF;
    o_status := 'stored';
END $$;

-- A device of p_user stored everything up to p_seq: its cursor and the user's move on;
-- for the direct messages newly delivered to the user, each sender's head is bumped
-- (one row per sender: its seq and the newest message id delivered) for the caller to
-- write the DELIVERED receipt there, in the same transaction.
CREATE FUNCTION tern_ack(p_user text, p_device text, p_seq bigint, p_direct integer)
RETURNS TABLE (o_sender text, o_seq bigint, o_up_to bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_dev bigint;
    v_before bigint;
    v_locked bigint;
    v_lock text[];
BEGIN
    v_seq := LEAST(p_seq, COALESCE((SELECT u.head_seq FROM users u WHERE u.uid = p_user), 0));
    v_dev := COALESCE((SELECT d.delivered_seq FROM devices d
                        WHERE d.uid = p_user AND d.device = p_device), 0);
    IF v_seq <= v_dev THEN
        RETURN;
    END IF;
    INSERT INTO devices (uid, device, delivered_seq) VALUES (p_user, p_device, v_seq)
    ON CONFLICT (uid, device)
    DO UPDATE SET delivered_seq = GREATEST(devices.delivered_seq, excluded.delivered_seq);
    v_before := COALESCE((SELECT u.delivered_seq FROM users u WHERE u.uid = p_user), 0);
    IF v_seq <= v_before THEN
        RETURN;
    END IF;
    -- The receipts' heads and the user's row, locked in one order; then the user's
    -- progress again under the lock (another server may have moved it).
    v_lock := ARRAY(
        SELECT s FROM (
            SELECT m.sender AS s FROM timeline t JOIN messages m ON m.id = t.message_id
             WHERE t.uid = p_user AND t.seq > v_before AND t.seq <= v_seq
               AND t.conv_kind = p_direct AND m.sender <> p_user
            UNION SELECT p_user) x
        ORDER BY s);
    PERFORM 1 FROM users u WHERE u.uid = ANY(v_lock) ORDER BY u.uid FOR UPDATE;
    v_locked := COALESCE((SELECT u.delivered_seq FROM users u WHERE u.uid = p_user), 0);
    IF v_seq <= v_locked THEN
        RETURN;
    END IF;
    UPDATE users u SET delivered_seq = v_seq WHERE u.uid = p_user;
    RETURN QUERY
    WITH senders AS (
        SELECT m.sender AS s, MAX(m.id) AS up_to
          FROM timeline t JOIN messages m ON m.id = t.message_id
         WHERE t.uid = p_user AND t.seq > v_locked AND t.seq <= v_seq
           AND t.conv_kind = p_direct AND m.sender <> p_user
         GROUP BY m.sender),
    bumped AS (
        INSERT INTO users (uid, head_seq) SELECT s, 1 FROM senders ORDER BY s
        ON CONFLICT (uid) DO UPDATE SET head_seq = users.head_seq + 1
        RETURNING users.uid, users.head_seq)
    SELECT b.uid, b.head_seq, s.up_to FROM bumped b JOIN senders s ON s.s = b.uid;
END $$;
