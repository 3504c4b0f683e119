"""Runs: configuration in, a self-describing run directory out."""
