"""The `h3de` command line."""
