"""Where the module's files are: installed, the library and Resources/ sit beside the module file;
in the source tree, one level up."""

import os
import sys

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_ROOTS = (MODULE_DIR, os.path.dirname(MODULE_DIR))


def resourcePath(relativePath):
    """Absolute path of a file under Resources/."""
    for root in SEARCH_ROOTS:
        path = os.path.join(root, "Resources", relativePath)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"H3DE Landmarks resource {relativePath} is missing.")


def makeLibraryImportable():
    """Put the folder holding H3DELandmarksLib on sys.path (the source tree needs it)."""
    for root in SEARCH_ROOTS:
        if os.path.isdir(os.path.join(root, "H3DELandmarksLib")):
            if root not in sys.path:
                sys.path.insert(0, root)
            return
