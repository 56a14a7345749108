"""Models: the weights manager (where pretrained weights come from, read safely), the offline architecture
chooser, the surgery (head replaced, keys popped and filtered, layers frozen) and Grad-CAM explanations.

May import: ``platform``, ``spec``, ``data``.
"""
