"""Data: the column contract, tokenisation, packing and the Ray Data pipelines."""
