"""The ``distilldift`` command: parses, calls the library, prints (``app``: the commands)."""
