"""Versioned pyarrow schemas of every output table, one module per table."""
