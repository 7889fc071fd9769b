"""The spec language: grammar, key scanner, parser, rule objects and spec text."""
