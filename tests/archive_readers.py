"""Reads a table of an mdrec archive as one dataset with the four readers analysts use and
prints what each sees as JSON: per reader the rows as [venue, symbol, key..., value text...]
sorted, and the column types. Exit 3: a reader is not installed. Called by tests/archive.rs:
archive_readers.py ROOT TABLE KEY_COLUMNS VALUE_COLUMNS"""

import json
import sys

try:
    import duckdb
    import polars as pl
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
except ImportError as e:
    print(f"cannot import a Parquet reader: {e}", file=sys.stderr)
    sys.exit(3)

root, table, keys, values = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
base = f"{root}/{table}"


def text(v):
    # Decimal keeps every digit; normalize() drops the scale's trailing zeros
    if v is None:
        return None
    if hasattr(v, "normalize"):
        s = format(v.normalize(), "f")
        return s
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def rows_of(records):
    out = [[str(r["venue"]), str(r["symbol"])] + [r[k] for k in keys] + [text(r[v]) for v in values] for r in records]
    out.sort(key=lambda r: tuple(str(x) for x in r))
    return out


seen = {}
# pyarrow.parquet.read_table on the table's directory: hive keys from the path
t = pq.read_table(base)
seen["pyarrow.parquet"] = {"rows": rows_of(t.to_pylist()), "types": {f.name: str(f.type) for f in t.schema}}
# pyarrow.dataset with hive partitioning
d = pads.dataset(base, format="parquet", partitioning="hive").to_table()
seen["pyarrow.dataset"] = {"rows": rows_of(d.to_pylist()), "types": {f.name: str(f.type) for f in d.schema}}
# polars
p = pl.scan_parquet(f"{base}/**/*.parquet", hive_partitioning=True).collect()
seen["polars"] = {"rows": rows_of(p.to_dicts()), "types": {k: str(v) for k, v in p.schema.items()}}
# DuckDB
rel = duckdb.sql(f"SELECT * FROM read_parquet('{base}/**/*.parquet', hive_partitioning = true)")
cols = rel.columns
seen["duckdb"] = {
    "rows": rows_of([dict(zip(cols, r)) for r in rel.fetchall()]),
    "types": {c: str(ty) for c, ty in zip(cols, rel.types)},
}
print(json.dumps(seen, default=str))
