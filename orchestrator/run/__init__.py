"""The run directory and its commit protocol: storage, the lock, the artifact contract."""
