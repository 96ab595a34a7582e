"""Versioned pyarrow schemas of every output table, one module per table.

Each schema carries its table name and version in the Parquet key-value metadata.
"""

from __future__ import annotations

import pyarrow as pa

# The layout Hugging Face `datasets` reads as an Image feature.
IMAGE_STRUCT = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def versioned(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"table": name, "schema_version": str(version)})


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly the schema's columns, types and metadata; raises ValueError when it cannot."""
    missing = [n for n in schema.names if n not in table.column_names]
    extra = [n for n in table.column_names if n not in schema.names]
    if missing or extra:
        raise ValueError(f"table {schema.metadata[b'table'].decode()}: missing columns {missing}, unexpected {extra}")
    return table.select(schema.names).cast(schema)


def matches(schema: pa.Schema, expected: pa.Schema) -> bool:
    """Same fields (names, types, nullability) and the same table name and version."""
    return schema.remove_metadata().equals(expected.remove_metadata()) and all(
        (schema.metadata or {}).get(k) == v for k, v in expected.metadata.items()
    )
