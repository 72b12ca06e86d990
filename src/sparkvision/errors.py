"""Every error sparkvision raises on purpose, in one place below everything else (nothing here imports
the package). Each message names the file, key or field at fault."""

import pickle


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message names the dotted key (``split.test_fraction``)."""


class AuthError(ConfigError):
    """The shared secret is missing, unreadable or inconsistent; the message never holds the secret."""


class CredentialInURL(ValueError):
    """A URL setting carries a signature that cannot be separated from it (SAS, presigned query)."""


class LoadError(ValueError):
    """The input as a whole cannot be used (missing path, fewer than two classes, ...)."""


class ImageRejected(ValueError):
    """An input file that cannot be used; ``str(exc)`` is the reason."""


class OutputLocked(RuntimeError):
    """Another run holds the output folder."""


class StaleOutput(RuntimeError):
    """A stage's inputs do not belong together; the message says which stage to re-run."""


class StreamConflict(RuntimeError):
    """The output's batches were committed by another query (another checkpoint)."""


class StackError(RuntimeError):
    """Installed versions outside the tested ranges; the message names each one."""


class EngineError(ValueError):
    """An engine or precision that cannot run here, or an export that failed; says which and why."""


class WeightsNotFoundError(FileNotFoundError):
    """No weights could be found or fetched; the message says how to supply them offline."""


class ChecksumMismatchError(ValueError):
    """A downloaded weights file does not have the sha256 its registry entry gives."""


class WeightsChecksumError(ValueError):
    """The weights file a worker opens is not the one the driver fingerprinted."""


class CheckpointError(ValueError):
    """The checkpoint is malformed, inconsistent or too large; the message names file and tensor."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint asked for something a plain state dict never needs."""


class TrackingError(RuntimeError):
    """MLflow was asked for and could not be used (server unreachable, model not found, ...)."""


class ImageLoaderContractError(ValueError):
    """``imageLoader`` returned something the model cannot take: a bug in the loader, not bad data."""
