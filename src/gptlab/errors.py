"""The one exception type for mistakes a user can fix (bad path, bad option, bad file)."""


class GptlabError(ValueError):
    """A user error. Its message is one clear line; the command line prints it and exits 2."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (another library's, inside one of ours), or its
    type's name where it has none."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
