-- `mdrec book --at T` finds the last snapshot at or before an exchange time.
CREATE INDEX book_snapshots_event_time ON book_snapshots (venue, symbol, depth_step, event_time_ms);
