"""Reads mdrec's Parquet exports with pandas (pyarrow), polars and DuckDB and checks what each
sees: timestamps in microseconds UTC, DECIMAL(38, s) with the database's values, book levels
as lists of (price, qty), the key-value metadata, and a hive directory read as one dataset.
Exit 3: a reader is not installed. Called by tests/export.rs with a JSON spec."""

import json
import sys
from decimal import Decimal

try:
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"cannot import a Parquet reader: {e}", file=sys.stderr)
    sys.exit(3)

EPOCH = pd.Timestamp(0, tz="UTC")


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def same(what, got, want):
    if len(got) != len(want):
        fail(f"{what}: {len(got)} values, want {len(want)}")
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            fail(f"{what}: row {i}: {g!r} != {w!r}")


def dec(v):
    return None if v is None else Decimal(v)


def levels(v):
    return [(Decimal(p), Decimal(q)) for p, q in v]


def check_file(f):
    path = f["path"]
    schema = pq.read_schema(path)
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    for k, v in f["metadata"].items():
        if meta.get(k) != v:
            fail(f"{path}: metadata {k} = {meta.get(k)!r}, want {v!r}")
    pdf = pd.read_parquet(path)
    pldf = pl.read_parquet(path)
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
    dtypes = dict(zip(rel.columns, [str(t) for t in rel.types]))
    drows = rel.fetchall()
    dcol = {c: [r[i] for r in drows] for i, c in enumerate(rel.columns)}
    for c in f["columns"]:
        name, ty, want = c["name"], c["ty"], c["values"]
        kind = ty["type"]
        where = f"{path}:{name}"
        if kind == "timestamp":
            if schema.field(name).type != pa.timestamp("us", tz="UTC"):
                fail(f"{where}: arrow type {schema.field(name).type}")
            if str(pdf[name].dtype) != "datetime64[us, UTC]":
                fail(f"{where}: pandas dtype {pdf[name].dtype}")
            if pldf.schema[name] != pl.Datetime("us", "UTC"):
                fail(f"{where}: polars dtype {pldf.schema[name]}")
            if dtypes[name] != "TIMESTAMP WITH TIME ZONE":
                fail(f"{where}: duckdb type {dtypes[name]}")
            us = [None if pd.isna(v) else (v - EPOCH) // pd.Timedelta(microseconds=1) for v in pdf[name]]
            same(f"{where} pandas", us, want)
            same(f"{where} polars", pldf[name].dt.epoch("us").to_list(), want)
            dus = [None if v is None else (pd.Timestamp(v) - EPOCH) // pd.Timedelta(microseconds=1) for v in dcol[name]]
            same(f"{where} duckdb", dus, want)
        elif kind == "decimal":
            s = ty["scale"]
            if schema.field(name).type != pa.decimal128(38, s):
                fail(f"{where}: arrow type {schema.field(name).type}, want decimal128(38, {s})")
            if pldf.schema[name] != pl.Decimal(38, s):
                fail(f"{where}: polars dtype {pldf.schema[name]}")
            if dtypes[name] != f"DECIMAL(38,{s})":
                fail(f"{where}: duckdb type {dtypes[name]}")
            w = [dec(v) for v in want]
            p = [None if v is None or (not isinstance(v, Decimal) and pd.isna(v)) else v for v in pdf[name]]
            if any(v is not None and not isinstance(v, Decimal) for v in p):
                fail(f"{where}: pandas values are not Decimal")
            same(f"{where} pandas", p, w)
            same(f"{where} polars", pldf[name].to_list(), w)
            same(f"{where} duckdb", dcol[name], w)
        elif kind == "levels":
            s = ty["scale"]
            elem = pa.struct([("price", pa.decimal128(38, s)), ("qty", schema.field(name).type.value_type.field("qty").type)])
            if not pa.types.is_list(schema.field(name).type) or schema.field(name).type.value_type.field("price").type != elem.field("price").type:
                fail(f"{where}: arrow type {schema.field(name).type}")
            w = [levels(v) for v in want]
            same(f"{where} pandas", [[(x["price"], x["qty"]) for x in v] for v in pdf[name]], w)
            same(f"{where} polars", [[(x["price"], x["qty"]) for x in v] for v in pldf[name].to_list()], w)
            same(f"{where} duckdb", [[(x["price"], x["qty"]) for x in v] for v in dcol[name]], w)
        elif kind == "int":
            same(f"{where} pandas", [None if pd.isna(v) else int(v) for v in pdf[name]], want)
            same(f"{where} polars", pldf[name].to_list(), want)
            same(f"{where} duckdb", dcol[name], want)
    return len(pdf)


def check_hive(h):
    """The hive directory as one table, in every reader: each trade's decimals exactly as
    stored, whatever scale each symbol's files would need alone; the symbol from the path."""
    d = h["dir"]
    glob = f"{d}/**/*.parquet"
    want = sorted(
        (t["symbol"], t["trade_id"], dec(t["price"]), dec(t["qty"]), dec(t["quote_qty"]))
        for t in h["trades"]
    )
    cols = ["symbol", "trade_id", "price", "qty", "quote_qty"]

    def rows(where, records):
        got = sorted((str(s), int(i), p, q, None if qq is None or (not isinstance(qq, Decimal) and pd.isna(qq)) else qq)
                     for s, i, p, q, qq in records)
        if len(got) != len(want):
            fail(f"hive {where}: {len(got)} rows, want {len(want)}")
        for g, w in zip(got, want):
            if g != w:
                fail(f"hive {where}: {g} != {w}")
        return len(got)

    sel = ", ".join(cols)
    rows("duckdb", duckdb.sql(f"SELECT {sel} FROM read_parquet('{glob}', hive_partitioning = true)").fetchall())
    rows("duckdb union_by_name",
         duckdb.sql(f"SELECT {sel} FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)").fetchall())
    pl_df = pl.scan_parquet(glob, hive_partitioning=True).select(cols).collect()
    rows("polars", pl_df.iter_rows())
    t = pq.read_table(d)
    rows("pyarrow read_table", zip(*[t.column(c).to_pylist() for c in cols]))
    dt = pads.dataset(d, format="parquet", partitioning="hive").to_table()
    rows("pyarrow dataset", zip(*[dt.column(c).to_pylist() for c in cols]))
    pdf = pd.read_parquet(d)
    n = rows("pandas", zip(*[pdf[c].tolist() for c in cols]))
    per_symbol = duckdb.sql(
        f"SELECT symbol, count(DISTINCT date) FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY symbol"
    ).fetchall()
    if len(per_symbol) != h["rows"]:
        fail(f"hive: duckdb sees symbols {per_symbol}")
    return n


def main():
    spec = json.load(open(sys.argv[1]))
    counts = [check_file(f) for f in spec["files"]]
    total = check_hive(spec["hive"])
    print(f"pandas {pd.__version__}, polars {pl.__version__}, duckdb {duckdb.__version__}: "
          f"{len(counts)} files ({sum(counts)} rows) typed and equal; hive dataset {total} rows")


main()
