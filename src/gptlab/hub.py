"""Fetching files from the Hugging Face hub into its usual cache (needs a network)."""

from __future__ import annotations

from pathlib import Path

from gptlab.errors import GptlabError, first_line

# Short names users type -> the repositories that hold OpenAI's GPT-2 weights today.
GPT2_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


def looks_like_repo_id(name: str) -> bool:
    """True for 'gpt2' or 'owner/name'; False for things that can only be local paths."""
    if name in GPT2_REPOS:
        return True
    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    parts = name.split("/")
    return len(parts) == 2 and all(parts)


def snapshot(name: str, patterns: list[str]) -> Path:
    """Download (or find in the cache) the files of repository `name` that match `patterns`
    and return the local folder. Any failure becomes one GptlabError that says what to do."""
    repo_id = GPT2_REPOS.get(name, name)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # offline, unknown repo, HTTP error, ...
        reason = first_line(e)
        raise GptlabError(
            f"{name!r} is not a local folder, and fetching {repo_id!r} from the Hugging Face "
            f"hub failed ({type(e).__name__}: {reason}); to work offline, pass a local folder "
            "instead"
        ) from e
