-- the highest server id each receipt status covers per conversation. Receipts
-- arrive as pushes (datagrams) and can overtake the SendResult (stream) of the
-- messages they cover; a SendResult arriving late must still land on Delivered/Read.
ALTER TABLE conversations ADD COLUMN delivered_up_to INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN read_up_to INTEGER NOT NULL DEFAULT 0;
