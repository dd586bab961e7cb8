-- Venues that number their book updates: the update id of a delta and the id it follows
-- (a delta whose previous id is not the last one applied means updates were lost: the book
-- breaks there and is rebuilt only from the next snapshot). NULL where the venue sends none.
ALTER TABLE book_deltas ADD COLUMN update_id INTEGER;
ALTER TABLE book_deltas ADD COLUMN prev_update_id INTEGER;
