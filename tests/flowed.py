"""Reading a format=flowed; delsp=yes text part as a reader that supports it does (RFC 3676)."""

from __future__ import annotations


def unflow(text: str) -> str:
    """A text part as a format=flowed; delsp=yes reader shows it (RFC 3676 4.1-4.3): quote depth read, one
    space-stuffing space dropped, a line ending in a space joined to the next with that space deleted."""
    out: list[tuple[int, str]] = []  # quote depth, text
    joining = False
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        body = body[1:] if body.startswith(" ") else body
        soft = body.endswith(" ") and body != "-- "
        body = body[:-1] if soft else body
        if joining and out and out[-1][0] == depth:
            out[-1] = (depth, out[-1][1] + body)
        else:
            out.append((depth, body))
        joining = soft
    return "\n".join("> " * depth + body if depth else body for depth, body in out)
