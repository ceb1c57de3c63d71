"""Blind A/B arena: people vote between two scenarios' result lists; votes in SQLite (WAL)."""
