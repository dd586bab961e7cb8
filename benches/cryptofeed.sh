#!/bin/sh
# mdrec side by side with cryptofeed (the peer a user would pick instead) on the same
# simulated feed: the project's simulator speaking Crypto.com's v2 dialect over TLS (a CA
# made for the run), trades + 150-level books + 1m candles + tickers, into the same
# PostgreSQL, measured the same way (window CPU from /proc, then the market halted and the
# stored trades compared with the simulator's ledger). Rounds alternate the two.
#
#   benches/cryptofeed.sh            # SYMBOLS=20 STEP_MS=60 MEASURE_S=30 ROUNDS=3 CUT_EVERY=10
#
# After the rounds, one more pair with every connection cut every CUT_EVERY seconds (no
# close frame): what each loses when the network does.
#
# cryptofeed comes from PyPI into a virtual environment under target/ (made once).
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-target/cryptofeed-venv}
CRYPTOFEED=${CRYPTOFEED:-cryptofeed==2.4.1}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "$CRYPTOFEED" asyncpg
"$VENV/bin/pip" show cryptofeed | grep -i '^version'
common="--venue cdc-v2 --tls --db postgres --symbols ${SYMBOLS:-20} --step-ms ${STEP_MS:-60} \
 --depth 150 --klines 1m --warmup 10 --seconds ${MEASURE_S:-30}"
for round in $(seq "${ROUNDS:-3}"); do
    echo "## round $round"
    # shellcheck disable=SC2086
    cargo bench --bench e2e -- $common --peer cryptofeed --python "$VENV/bin/python"
    # shellcheck disable=SC2086
    cargo bench --bench e2e -- $common --peer mdrec
done
echo "## every connection cut every ${CUT_EVERY:-10} s"
for peer in cryptofeed mdrec; do
    # shellcheck disable=SC2086
    cargo bench --bench e2e -- $common --cut-every "${CUT_EVERY:-10}" --peer "$peer" \
        --python "$VENV/bin/python"
done
