"""What a run reports: the metric catalogue, the live log, the report, compare and replay."""
