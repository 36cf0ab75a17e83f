"""Smoke check of the built wheel in fresh virtual environments (tests/smoke/run.sh)."""
