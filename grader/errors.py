"""The grader's own exceptions: each names the file or input at fault and the problem."""


class GraderError(Exception):
    """A problem the user can fix; the CLI prints it and exits non-zero."""


class ConfigError(GraderError):
    """The assignment config is missing, unreadable or invalid."""


class DataError(GraderError):
    """MNIST could not be provisioned or a file is corrupt."""


class ClassifierError(GraderError):
    """The classifier weights are missing or do not match their recorded hash."""
