"""One base error: every user-facing schemabuild error subclasses `SchemabuildError`, so a caller catches one name.

The CLI shows any of them as one line (no traceback) and exits non-zero.
"""

from __future__ import annotations


class SchemabuildError(Exception):
    """A user mistake or an unusable input; the message is one line that names the flag, file or field."""


class TaskError(SchemabuildError):
    """A user mistake in a task file or task name; the message is one line, shown without a traceback."""


class ConfigError(SchemabuildError, ValueError):
    """A bad setting; the message names the flag."""


class ContractError(SchemabuildError):
    """A model artifact does not match the task or tokenizer it is used with."""


class GrammarError(SchemabuildError, ValueError):
    """The schema cannot be compiled (invalid or unsupported); the server answers 400."""


class TeacherError(ConfigError):
    """The teacher endpoint refuses every call (bad key, unknown model, wrong URL); shown as one line."""
