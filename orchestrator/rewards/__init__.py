"""Self-rewards and which to trust: judge prompts and parsing, pair selection, consistency, uncertainty.

Pure functions over the judged rows; nothing here imports torch or Ray.
"""
