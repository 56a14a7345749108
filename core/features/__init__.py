"""The frozen part's outputs: computing them for a list of images and the feature cache they are kept in.

May import: ``platform``, ``spec``, ``data``, ``models``.
"""
