"""The daily run: which post in a folder is today's, and whether a post is too old (or too new) to send."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from .config import Settings
from .console import Console
from .errors import MailerError, PostError
from .post import Post, load_post


def today(settings: Settings) -> dt.date:
    """Today's date in the publisher's time zone (not the server's)."""
    return dt.datetime.now(ZoneInfo(settings.timezone)).date()


def pick_post(folder: Path, day: dt.date) -> tuple[Path | None, list[str]]:
    """The post in `folder` dated `day` (front matter date, else a YYYY-MM-DD file name), and any problems."""
    matches: list[Path] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.md")):
        try:
            post = load_post(path)
        except PostError as exc:
            if path.stem.startswith(day.isoformat()):
                problems.append(str(exc))
            continue
        date = post.date or _date_from_name(path)
        if date == day:
            matches.append(path)
    if len(matches) > 1:
        names = ", ".join(str(p) for p in matches)
        raise MailerError(f"{folder}: {len(matches)} posts are dated {day}: {names}; send one by name")
    return (matches[0] if matches else None), problems


def resolve_post(target: Path, settings: Settings, console: Console) -> Path | None:
    """A post path as given, or today's post when `target` is a folder (None: no post dated today).

    What every command that takes a post does with a folder: send, check, render (preview shows them all).
    """
    if not target.is_dir():
        return target
    day = today(settings)
    path, problems = pick_post(target, day)
    for problem in problems:
        console.warn(problem)
    if path is None:
        return None
    console.note(f"Today's post ({day}, {settings.timezone}): {path}")
    return path


def require_post(target: Path, settings: Settings, console: Console) -> Path:
    """resolve_post() for a command that needs a post: a folder with none dated today is an error."""
    path = resolve_post(target, settings, console)
    if path is None:
        raise MailerError(
            f"{target}: no post dated {today(settings)} (today in {settings.timezone}) in it; name the post"
        )
    return path


def _date_from_name(path: Path) -> dt.date | None:
    try:
        return dt.date.fromisoformat(path.stem[:10])
    except ValueError:
        return None


def age_refusal(post: Post, settings: Settings, day: dt.date) -> str:
    """Why a post is refused for its date ('' if it is not): yesterday's news from a late cron job, or
    tomorrow's post sent early; --force skips this."""
    if post.date is None:
        return ""
    age = (day - post.date).days
    if age > settings.max_age_days:
        return (
            f"dated {post.date}, {age} days ago (today is {day} in {settings.timezone}); "
            f"posts older than {settings.max_age_days} day(s) need --force"
        )
    if age < 0:
        return (
            f"dated {post.date}, in the future (today is {day} in {settings.timezone}); "
            "pass --force to send it now"
        )
    return ""
