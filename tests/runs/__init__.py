"""Tests of the run folder, its records and status, readers beside writers."""
