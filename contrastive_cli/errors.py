"""User-facing errors: one readable paragraph naming the problem and the fix, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (spec, data, checkpoint) that the user can fix.

    `problem` says what is wrong, `fix` says what to do about it. The CLI prints both as one
    paragraph and exits with status 2.
    """

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem.rstrip(".")
        fix = fix.rstrip(".")
        self.fix = fix[:1].upper() + fix[1:]
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}."


class SpecError(UserError):
    """One or more invalid values in a run spec; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("Invalid run spec:\n  - " + "\n  - ".join(problems),
                         "Fix the values above (flags or --config file) and run again")

    def __str__(self) -> str:
        return f"{self.problem}\n{self.fix}."
