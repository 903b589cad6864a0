"""Entry points: the ``ws`` command line (outer layer; imports the core libraries)."""
