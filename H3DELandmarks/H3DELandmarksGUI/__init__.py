"""The H3DE Landmarks module's panel (Qt): the widget, its parameter node, its package installer.

It sits in a folder beside H3DELandmarks.py, as SlicerNNUnet's SlicerNNUNetLib does, so that
Slicer does not take these files for modules of their own. Every decision the panel shows comes
from H3DELandmarksLib (`mrml.panel_state`, `mrml.review`, `mrml.jobs`, `requirements`).
"""
