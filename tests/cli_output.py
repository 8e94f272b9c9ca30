"""What a failing command printed, read as a user reads it: one paragraph, no traceback."""


def panel_text(output: str) -> str:
    """The output with the error panel's box and line wrapping undone."""
    return " ".join(output.replace("│", " ").split())


def fails_cleanly(result, *needles, code: int = 2) -> str:
    """The command exited with `code`, printed no traceback, and its message holds every needle."""
    text = panel_text(result.output)
    assert result.exit_code == code and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text
