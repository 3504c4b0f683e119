"""Reporting: what a result was measured on, tables and (later) plots."""
