"""Tests of safe to serve: the gate, visitors' input, hostile files, bounded work."""
