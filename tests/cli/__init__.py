"""Tests of the command line and the package metadata."""
