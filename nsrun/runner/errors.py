"""Errors that the command line reports as one line with exit code 2."""


class ConfigError(ValueError):
    """A bad configuration value: ``key`` names the config key, the message says what is allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.detail = message
        super().__init__(f"{key}: {message}")

    def __reduce__(self):  # picklable, so a failing job's error reaches the sweep's report intact
        return (type(self), (self.key, self.detail))


class UsageError(ValueError):
    """Bad input that is not a single config key (a run directory, a file)."""
