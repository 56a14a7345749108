"""Tests of what a run is: the settings, their choices and the pages' shared choices."""
