-- The best bid and ask with their sizes, as the venue's ticker carries them (a top-of-book
-- series without a book replay). NULL where the venue does not send them.
ALTER TABLE tickers ADD COLUMN bid NUMERIC;
ALTER TABLE tickers ADD COLUMN bid_qty NUMERIC;
ALTER TABLE tickers ADD COLUMN ask NUMERIC;
ALTER TABLE tickers ADD COLUMN ask_qty NUMERIC;
