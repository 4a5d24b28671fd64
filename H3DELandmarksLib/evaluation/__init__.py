"""Evaluation of detected landmarks against the truth: metrics and report folders (tables, plots)."""
