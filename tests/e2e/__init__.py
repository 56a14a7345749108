"""Tests of end to end: real Chromium against a real server, torchrun processes."""
