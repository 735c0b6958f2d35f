"""The errors the CLI turns into a one-line message and an exit code (2, unless the class says otherwise).

Code below the CLI raises these with a message for a person: what is wrong, which
thing (file, key, step) it concerns, and how to fix it. Anything else is a bug and
is allowed to propagate with its traceback.
"""


class DreamctlError(Exception):
    """A failure the user can fix; the message says how."""

    exit_code = 2  # bad input, as click's usage errors


class ConfigError(DreamctlError):
    """A recipe or override is invalid (names the dotted key and the file)."""


class DataError(DreamctlError):
    """Input images, shards or manifests are missing, corrupt or inconsistent."""


class CheckpointError(DreamctlError):
    """A checkpoint or run folder cannot be used."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file whose contents do not load (truncated, not a checkpoint): resume skips it."""


class MetricUndefined(DataError):
    """The images admit no value of one metric (a covariance product without a real square root, images too
    small for SWD's pyramid): that metric is recorded as missing, the others still count."""


class WeightsError(DreamctlError):
    """A metric's weight file is missing or does not match its checksum."""


class RunError(DreamctlError):
    """A run cannot start or continue (locked folder, NaN loss, refused override)."""


class PeerLost(DreamctlError):
    """Under torchrun: a collective failed because another process of the job has gone (crashed, killed).
    Not bad input, so not exit code 2; its traceback would only say where this process was waiting."""

    exit_code = 1


class StoppedWithMain(RunError):
    """On a rank other than 0: rank 0 could not go on (its own error says why; this one is not printed)."""


class DreamctlWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""
