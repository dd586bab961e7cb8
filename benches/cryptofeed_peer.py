#!/usr/bin/env python3
"""The peer side of benches/cryptofeed.sh: cryptofeed recording the project's simulator
(Crypto.com v2 dialect, over TLS) into PostgreSQL with cryptofeed's own PostgreSQL backend.

Run by `cargo bench --bench e2e -- --peer cryptofeed ...`, which starts the simulator, hands
this script its URLs and a fresh database, and trusts the simulator's CA through
SSL_CERT_FILE (websockets) and REQUESTS_CA_BUNDLE (cryptofeed's symbol listing).
"""
import argparse
import asyncio

import asyncpg
from cryptofeed import FeedHandler
from cryptofeed.backends.postgres import (
    BookPostgres,
    CandlesPostgres,
    TickerPostgres,
    TradePostgres,
)
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import CANDLES, L2_BOOK, TICKER, TRADES
from cryptofeed.exchanges import CryptoDotCom

# The column layout cryptofeed's backend inserts positionally (its format() methods).
TABLES = """
CREATE TABLE IF NOT EXISTS trades (
    id BIGSERIAL PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange TEXT, symbol TEXT, side TEXT, amount NUMERIC, price NUMERIC,
    trade_id TEXT, type TEXT);
CREATE TABLE IF NOT EXISTS book (
    id BIGSERIAL PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange TEXT, symbol TEXT, data JSONB);
CREATE TABLE IF NOT EXISTS ticker (
    id BIGSERIAL PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange TEXT, symbol TEXT, bid NUMERIC, ask NUMERIC);
CREATE TABLE IF NOT EXISTS candles (
    id BIGSERIAL PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP,
    exchange TEXT, symbol TEXT, start TIMESTAMP, stop TIMESTAMP, interval TEXT,
    trades BIGINT, open NUMERIC, close NUMERIC, high NUMERIC, low NUMERIC,
    volume NUMERIC, closed BOOLEAN);
"""


async def create_tables(pg):
    conn = await asyncpg.connect(
        host=pg["host"], port=pg["port"], user=pg["user"], database=pg["db"]
    )
    await conn.execute(TABLES)
    await conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ws", required=True, help="wss:// URL of the simulator's market socket")
    ap.add_argument("--rest", required=True, help="https://host:port of its REST server")
    ap.add_argument("--symbols", required=True, help="comma-separated exchange names")
    ap.add_argument("--pg-host", default="127.0.0.1")
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--pg-db", required=True)
    args = ap.parse_args()
    pg = dict(host=args.pg_host, port=args.pg_port, user=args.pg_user, db=args.pg_db)
    # cryptofeed runs on the thread's current loop: make one, create the tables on it
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(create_tables(pg))

    class Simulated(CryptoDotCom):
        websocket_endpoints = [WebsocketEndpoint(args.ws)]
        rest_endpoints = [
            RestEndpoint(args.rest, routes=Routes("/v2/public/get-instruments"))
        ]

    # cryptofeed's own names: BASE-QUOTE
    symbols = [s.replace("_", "-") for s in args.symbols.split(",")]
    fh = FeedHandler(config={"log": {"filename": "/dev/null", "level": "WARNING"}})
    fh.add_feed(
        Simulated(
            symbols=symbols,
            channels=[TRADES, L2_BOOK, CANDLES, TICKER],
            callbacks={
                TRADES: TradePostgres(**pg),
                L2_BOOK: BookPostgres(**pg),
                CANDLES: CandlesPostgres(**pg),
                TICKER: TickerPostgres(**pg),
            },
        )
    )
    fh.run()


if __name__ == "__main__":
    main()
