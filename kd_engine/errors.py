"""User-facing errors: each one prints as a single line naming the field or file at fault."""


class KDWError(Exception):
    """An error caused by the user's input (config, files, data). The CLI prints it as one line."""


class ConfigError(KDWError):
    """A config value is missing, misspelled, of the wrong type, or inconsistent."""


class DataError(KDWError):
    """A dataset file or folder is missing or malformed."""


class CheckpointError(KDWError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


class NonFiniteLossError(KDWError):
    """Training produced a NaN or inf loss; the run stops before anything bad is saved."""
