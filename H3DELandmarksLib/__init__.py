"""H3DE Landmarks: anatomical landmark detection in CT-type volumes with H3DE-Net."""

__version__ = "0.1.0"
