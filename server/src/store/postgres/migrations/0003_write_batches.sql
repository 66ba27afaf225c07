-- Several direct messages and delivery ACKs in one call and one transaction (one WAL
-- flush): what a writer lane has queued at once. Every row lock the batch needs is
-- taken first, in the global order (device rows by (uid, device), then head rows by
-- uid), so batches of different lanes and servers cannot deadlock; then each message
-- and each ACK runs as alone (tern_store_direct, tern_ack), re-locking rows it holds.
--
-- One row per result: for message i (1-based) o_job = i and the columns of
-- tern_store_direct; for the ACK j, o_job = (number of messages) + j, o_status =
-- 'receipt', one row per DELIVERED receipt it asks for: o_recipient = the sender
-- told, o_sender_seq = the receipt's seq there, o_id = the newest message id delivered.
CREATE FUNCTION tern_write_batch(
    s_sender text[], s_cmid bytea[], s_recipient text[], s_kind integer[],
    s_content_type bigint[], s_body bytea[], s_client_ts bigint[], s_device text[],
    s_send_seq bigint[], s_require_known boolean[], p_ts bigint,
    a_user text[], a_device text[], a_seq bigint[], p_direct integer)
RETURNS TABLE (o_job integer, o_status text, o_id bigint, o_sender_seq bigint,
               o_recipient_seq bigint, o_server_ts bigint, o_expected bigint,
               o_kind integer, o_recipient text)
LANGUAGE plpgsql AS $$
DECLARE
    v_messages integer := COALESCE(array_length(s_sender, 1), 0);
    v_acks integer := COALESCE(array_length(a_user, 1), 0);
    v_heads text[];
    r record;
BEGIN
    PERFORM 1 FROM devices d
      JOIN (SELECT x.u, x.dv FROM unnest(s_sender, s_device, s_send_seq) AS x(u, dv, sq)
             WHERE x.sq > 0
            UNION SELECT y.u, y.dv FROM unnest(a_user, a_device) AS y(u, dv)) k
        ON d.uid = k.u AND d.device = k.dv
     ORDER BY d.uid, d.device FOR UPDATE OF d;
    -- Heads: the messages' senders and recipients, the ACKing users, and the senders
    -- their receipts go to (entries an ACK covers are committed already).
    v_heads := ARRAY(
        SELECT DISTINCT h FROM (
            SELECT unnest(s_sender) AS h
            UNION SELECT unnest(s_recipient)
            UNION SELECT unnest(a_user)
            UNION SELECT m.sender
              FROM unnest(a_user, a_seq) AS y(u, sq)
              JOIN users uu ON uu.uid = y.u
              JOIN timeline t ON t.uid = y.u AND t.seq > uu.delivered_seq AND t.seq <= y.sq
                             AND t.conv_kind = p_direct
              JOIN messages m ON m.id = t.message_id) z
        ORDER BY h);
    PERFORM 1 FROM users u WHERE u.uid = ANY(v_heads) ORDER BY u.uid FOR UPDATE;
    FOR i IN 1..v_messages LOOP
        SELECT * INTO r FROM tern_store_direct(
            s_sender[i], s_cmid[i], s_recipient[i], s_kind[i], s_content_type[i], s_body[i],
            s_client_ts[i], p_ts, s_device[i], s_send_seq[i], s_require_known[i]);
        o_job := i;
        o_status := r.o_status;
        o_id := r.o_id;
        o_sender_seq := r.o_sender_seq;
        o_recipient_seq := r.o_recipient_seq;
        o_server_ts := r.o_server_ts;
        o_expected := r.o_expected;
        o_kind := r.o_kind;
        o_recipient := r.o_recipient;
        RETURN NEXT;
    END LOOP;
    FOR j IN 1..v_acks LOOP
        FOR r IN SELECT * FROM tern_ack(a_user[j], a_device[j], a_seq[j], p_direct) LOOP
            o_job := v_messages + j;
            o_status := 'receipt';
            o_id := r.o_up_to;
            o_sender_seq := r.o_seq;
            o_recipient_seq := NULL;
            o_server_ts := NULL;
            o_expected := NULL;
            o_kind := NULL;
            o_recipient := r.o_sender;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END $$;
