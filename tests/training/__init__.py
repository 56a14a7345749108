"""Tests of the trainer, the finder, the head search, resume, speed choices, validation choosing."""
