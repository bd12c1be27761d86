"""ConfigError: bad user input, wherever it is found; akvm prints it as one line and exits 2."""


class ConfigError(ValueError):
    """Bad user input: the message is printed as is, and akvm exits with status 2."""
