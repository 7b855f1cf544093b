"""The driver: config, loop, stages, run state, selection math, reports."""
