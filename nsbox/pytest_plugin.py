"""nsbox's pytest plugin (registered through the ``pytest11`` entry point).  (Being written: issue 11.)"""
