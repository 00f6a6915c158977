"""Small helpers for user-facing messages."""

__all__ = ["count"]


def count(n: int, noun: str, plural: str = "") -> str:
    """``n`` and the noun in its number: "1 class", "2 classes", "1 shot", "0 shots".

    The plural is ``noun`` + "es" after s, x, z, ch and sh, else + "s" (or ``plural``)."""
    if n == 1:
        return f"{n} {noun}"
    if not plural:
        plural = noun + ("es" if noun.endswith(("s", "x", "z", "ch", "sh")) else "s")
    return f"{n} {plural}"
