"""Tests of the data layer: splits and list files, decoding, CIFAR-10."""
