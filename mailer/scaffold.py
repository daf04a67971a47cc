"""`mailer init`: a new site's files from mailer/skeleton/, never overwriting one a person already has."""

from __future__ import annotations

import importlib.resources
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from string import Template
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .config import Settings
from .errors import MailerError

SKELETON = importlib.resources.files("mailer") / "skeleton"
# where each skeleton file goes in the site (the sample post's name depends on the date)
FILES = {"mailer.toml": "mailer.toml", "subscribers.csv": "subscribers.csv", "gitignore": ".gitignore"}


@dataclass
class NewSite:
    """What `init` did: the files it made and the ones it found and left alone."""

    folder: Path
    made: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    sample: Path | None = None  # the dated sample post, unless posts/ already held posts

    def report(self) -> list[str]:
        """What was made and kept, then the three steps to a first send."""
        lines = [f"Made {path}" for path in self.made]
        lines += [f"Kept {path}: it exists (init never overwrites a file)" for path in self.kept]
        if self.sample is None:
            lines.append(f"Kept {self.folder / 'posts'}/ as it is: it has posts, so no sample was added")
        post = self.sample.name if self.sample else "YOUR-POST.md"
        cd = "" if self.folder.resolve() == Path.cwd() else f"cd {self.folder}; "
        return [
            *lines,
            "",
            "Next steps:",
            f"  1. {cd}edit mailer.toml: from_email, postal_address, web_url (smtp_host to send for real)",
            f"  2. mailer preview posts/    and    mailer check posts/{post}",
            "  3. mailer send posts/ --test YOU@YOUR.DOMAIN; readers into subscribers.csv; send posts/ --yes",
        ]


def local_timezone() -> str:
    """The machine's IANA zone (TZ, /etc/timezone, /etc/localtime's link): "today" is the writer's today."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        pass
    candidates.append(str(Path("/etc/localtime").resolve()).partition("/zoneinfo/")[2])
    for name in candidates:
        try:
            if name and ZoneInfo(name):
                return name
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return "UTC"


def init_site(folder: Path, timezone: str | None = None, today: date | None = None) -> NewSite:
    """Write the site's files into folder; an existing file is kept; posts/ gets a sample only if empty."""
    timezone = timezone or local_timezone()
    today = today or datetime.now(ZoneInfo(timezone)).date()
    defaults = Settings()
    values = {
        "timezone": timezone,
        "date": today.isoformat(),
        "from_email": defaults.from_email,  # the placeholders `mailer check` flags
        "postal_address": defaults.postal_address,
    }
    posts = folder / "posts"
    try:
        posts.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MailerError(f"{posts}: exists and is not a folder") from None
    except OSError as exc:
        raise MailerError(f"{folder}: cannot make the site here: {exc.strerror}") from None
    site = NewSite(folder)
    targets = {source: folder / name for source, name in FILES.items()}
    if not any(posts.glob("*.md")):  # a sample among real posts could go out with the next daily send
        targets["post.md"] = posts / f"{today.isoformat()}.md"
    for source, target in targets.items():
        text = Template((SKELETON / source).read_text(encoding="utf-8")).substitute(values)
        try:
            with open(target, "x", encoding="utf-8") as out:  # "x": never replaces a file, even in a race
                out.write(text)
        except FileExistsError:
            site.kept.append(target)
        except OSError as exc:
            raise MailerError(f"{target}: cannot write: {exc.strerror}") from None
        else:
            site.made.append(target)
            site.sample = target if source == "post.md" else site.sample
    return site
