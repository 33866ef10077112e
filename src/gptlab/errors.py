"""The one exception type for mistakes a user can fix (bad path, bad option, bad file)."""


class GptlabError(ValueError):
    """A user error. Its message is one clear line; the command line prints it and exits 2."""
