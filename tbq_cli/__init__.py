"""The ``tbq`` command line."""
