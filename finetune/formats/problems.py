"""Problems found in a training file, each with where it is (line, example, message) and a category."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_REPORTED = 10
STOP_AFTER = 1000  # a file this broken is not read on: the gateway's time is not the tenant's to spend


@dataclass(frozen=True)
class Problem:
    category: str
    message: str
    line: int | None = None
    example: int | None = None
    index: int | None = None  # 1-based position of the offending message in the example

    def render(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.example is not None:
            where.append(f"example {self.example}" if not where else f"(example {self.example})")
        if self.index is not None:
            where[-1:] = [where[-1] + f", message {self.index}"] if where else [f"message {self.index}"]
        prefix = " ".join(where)
        return f"{prefix}: [{self.category}] {self.message}" if prefix else f"[{self.category}] {self.message}"


@dataclass
class Problems:
    """Counts problems (up to ``STOP_AFTER``, then ``full``), keeps the first ``MAX_REPORTED`` for the message."""

    items: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, problem: Problem) -> None:
        self.total += 1
        if len(self.items) < MAX_REPORTED:
            self.items.append(problem)

    def __bool__(self) -> bool:
        return self.total > 0

    @property
    def full(self) -> bool:
        return self.total >= STOP_AFTER

    def render(self) -> str:
        shown = len(self.items)
        found = f"{self.total} problem(s) found" if not self.full else f"{STOP_AFTER} problems found, checking stopped"
        head = f"Invalid training file: {found}"
        head += f" (showing the first {shown})." if self.total > shown else "."
        return "\n".join([head, *("- " + p.render() for p in self.items)])


class ExampleErrors:
    """Problems of one example, stamped with its line and number as they are added."""

    def __init__(self, line: int, example: int) -> None:
        self.line = line
        self.example = example
        self.found: list[Problem] = []

    def __call__(self, category: str, message: str, index: int | None = None) -> None:
        if len(self.found) < STOP_AFTER:  # one example of a million bad messages is no more than a full list
            self.found.append(Problem(category, message, self.line, self.example, index))
