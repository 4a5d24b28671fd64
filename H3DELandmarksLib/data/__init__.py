"""Volumes, landmark sets, file formats, datasets, augmentation and phantoms."""
