"""What is built on compile and run: invert, verify, diff, inspect, load, draft."""
