"""Exceptions whose messages are meant to be shown to users as one line."""


class DiffdepthError(Exception):
    """Base class: the CLI prints ``str(err)`` without a traceback."""


class CheckpointError(DiffdepthError):
    """A checkpoint could not be found, downloaded or understood."""


class InputError(DiffdepthError):
    """A user input (image, video, file, value) is unusable."""


class ConfigError(DiffdepthError):
    """A config file or override is invalid."""
