"""Bytes at rest: the storage interface and its backends; no users, no protocol. No imports here."""
