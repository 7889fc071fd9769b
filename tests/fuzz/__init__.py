"""Fuzzing mapspec as an attacker would: hostile pickles (`pickles`), mutations of valid files
written by the real libraries (`seeds`, `mutate`), each case run in a resource-limited child
process and judged by one rule (`harness`). `python -m tests.fuzz.run` is the long campaign;
tests/test_fuzz.py runs a fixed quick subset in CI."""
