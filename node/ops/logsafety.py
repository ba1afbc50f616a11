"""A last line of defence for logs: secrets that reach a log record are masked before any handler writes it.

The node never logs keys or tokens on purpose; this filter catches what a library or an exception message
might carry: ``Bearer <token>`` / ``Authorization: ...`` values, and the values of environment variables whose
names say they hold a secret (``*KEY``, ``*TOKEN``, ``*SECRET``, ``*PASSWORD``), such as the endpoint keys.
"""

from __future__ import annotations

import logging
import os
import re

MASK = "***"
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
MIN_SECRET = 8  # shorter values would mask ordinary words
BEARER = re.compile(r"(?i)\b(bearer|authorization\s*[:=]\s*)(\s*)([A-Za-z0-9._~+/=-]{8,})")


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_ENV.search(k) and len(v) >= MIN_SECRET}
    return sorted(values, key=len, reverse=True)


class RedactSecrets(logging.Filter):
    """Masks secrets in the formatted message (arguments included) and in exception text."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self.secrets = secret_values() if secrets is None else secrets

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave the record to logging's own error path
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install_redaction() -> RedactSecrets:
    """Add the filter to every handler of the root logger (filters on handlers see records of all loggers)."""
    flt = RedactSecrets()
    for handler in logging.getLogger().handlers:
        handler.addFilter(flt)
    return flt
