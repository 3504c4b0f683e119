"""Small helpers shared by every package (no fedrec imports here)."""
