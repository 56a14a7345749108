"""Tests of models: surgery, weights, every architecture of the table, Grad-CAM."""
