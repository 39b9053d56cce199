"""Thin helpers shared by the single-file scripts: no algorithm lives here."""
