"""Ray entry points (`python -m jobs.<name>`): parse arguments, build a Ray Data plan, write Parquet."""
