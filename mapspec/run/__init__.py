"""Running a plan: the streaming executor and the in-memory engine."""
