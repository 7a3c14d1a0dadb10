"""The one error type of the data layer: bad input that the user can fix.

Every failure a user can act on (a missing file, a malformed split list, an unsafe archive member,
an incomplete download) is raised as a :class:`DataError` whose message says what is wrong and what
to do; the command-line tools print that message on one line and exit with status 2.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad or missing input to dataset preparation or partitioning, with a message to act on."""
