"""The one exception type for bad input: the CLI turns it into one line and exit code 2."""

from __future__ import annotations


class BadInput(Exception):
    """Bad user input (config, data file, spec).

    The message is one line naming the file, the field or line number, what was
    expected and what was found, e.g.
    ``data.jsonl line 7: field 'chosen': expected a string, found null``.
    """
