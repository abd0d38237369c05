"""Ingestion of other people's corpora into the normalised record schema (see pedray.data.columns)."""
