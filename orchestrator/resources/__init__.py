"""Resources: the plan of GPUs, CPUs and memory a run needs, made before any work."""
