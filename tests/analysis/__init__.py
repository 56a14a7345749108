"""Tests of the data check and the report."""
