"""Tests of using a trained run: export."""
