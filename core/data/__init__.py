"""Images and lists: scanning class folders, the seeded split and its list files, decoding and the datasets
(datasets), the health check of image files, uploads of zips, the demo and CIFAR-10 sets.

May import: ``platform``, ``spec``.
"""
