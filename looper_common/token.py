"""The service's bearer token on the client side: one place that reads it, with one policy."""

from __future__ import annotations

import os
from pathlib import Path

TOKEN_ENV = "LOOPER_SERVICE_TOKEN"


class TokenFileError(ValueError):
    """A token file was named but cannot be used: the message names it."""


def read_token(token_file: str | os.PathLike | None) -> str | None:
    """The bearer token: the named file's content, stripped (a missing or empty file is a TokenFileError, never
    a silent "no token"); without a file, $LOOPER_SERVICE_TOKEN (None when unset or empty)."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise TokenFileError(f"token file {token_file} does not exist")
        token = path.read_text().strip()
        if not token:
            raise TokenFileError(f"token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None
