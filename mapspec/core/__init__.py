"""The bottom layer: tensor facts, dtype names, lazy numpy, small threads and caches; imports nothing of mapspec but errors and version."""
