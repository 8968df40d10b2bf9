"""The store's own error: what a user named is not there."""
from __future__ import annotations


class NotFound(LookupError):
    """A dataset, run, image, audit or evaluation set the user named is not in the store."""
