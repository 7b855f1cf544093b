"""Measuring: the evaluate stage, answer grading, label quality, and numbers with their uncertainty."""
