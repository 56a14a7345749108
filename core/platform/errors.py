"""Errors that carry a message meant for the person using the tool.

Pages show them with ``st.error`` and the CLI prints them on one line; anything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and what is allowed."""


class DatasetError(UserError):
    pass


class ImageError(UserError):
    pass


class WeightsError(UserError):
    pass


class DownloadError(UserError):
    pass


class UploadError(UserError):
    pass


class ConfigError(UserError):
    pass


def not_finite_message(source) -> str:
    """One sentence for a model whose outputs overflow or are NaN, wherever they are met."""
    return (f"the model '{source}' gave outputs that are not finite numbers (NaN or infinity); its probabilities "
            "would mean nothing. Train it again with a lower learning rate")


class RunError(UserError):
    pass
