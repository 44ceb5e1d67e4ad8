"""The ``mathpe`` command line."""
