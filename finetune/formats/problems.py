"""Problems found in a training file, each with where it is (line, example, message) and a category."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_REPORTED = 10


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
    """Collects every problem, keeps the first ``MAX_REPORTED`` for the message."""

    items: list[Problem] = field(default_factory=list)
    total: int = 0

    def add(self, problem: Problem) -> None:
        self.total += 1
        if len(self.items) < MAX_REPORTED:
            self.items.append(problem)

    def __bool__(self) -> bool:
        return self.total > 0

    def render(self) -> str:
        shown = len(self.items)
        head = f"Invalid training file: {self.total} problem(s) found"
        head += f" (showing the first {shown})." if self.total > shown else "."
        return "\n".join([head, *("- " + p.render() for p in self.items)])


class ExampleErrors:
    """Problems of one example, stamped with its line and number as they are added."""

    def __init__(self, line: int, example: int) -> None:
        self.line = line
        self.example = example
        self.found: list[Problem] = []

    def __call__(self, category: str, message: str, index: int | None = None) -> None:
        self.found.append(Problem(category, message, self.line, self.example, index))
