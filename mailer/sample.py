"""`mailer render`: the sample subscriber's copy of a post, as the whole .eml or one part as a file.

The parts come out as the web copy of an issue does (Part.as_file: filled, LF line ends), through the same
factory as the send, so what a writer looks at is what readers get.
"""

from __future__ import annotations

from pathlib import Path

from .checks import post_warnings
from .config import Settings
from .console import Console
from .errors import MailerError
from .keymarks import copy_keyring
from .message import make_factory
from .post import load_post
from .render import render_issue
from .schedule import require_post


def render_sample(target: Path, settings: Settings, form: str, console: Console, output: Path | None) -> None:
    """Render the post in `target` (a folder: today's) for the sample subscriber; print it or write `output`.

    The pre-send checks about the post that do not pass are warnings on the way, and so are links that the
    record's key would not verify (keymarks.copy_keyring).
    """
    post = require_post(target, settings, console)
    issue = render_issue(load_post(post), settings)
    for warning in post_warnings(issue, settings):
        console.warn(warning)
    keyring = copy_keyring(settings, console)  # the links as a send would sign them
    factory = make_factory(issue, settings, console=console, keyring=keyring)
    if form == "eml":
        data = factory.build(settings.sample_email, settings.sample_name)
    else:
        values = issue.sample_values(settings)
        values["unsubscribe_url"] = factory.unsubscribe_url(settings.sample_email)
        data = (issue.text if form == "text" else issue.html).as_file(values)
    if output is None:
        console.result(data.decode("utf-8"), end="")
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise MailerError(f"{output}: cannot write: {exc.strerror}") from None
    console.note(f"Wrote {output} ({len(data) // 1024} KB)")
