"""Extract annotated capture dumps (``docs/protocol.md`` Appendix A) into JSON.

Run from anywhere::

    python tests/data/extract_golden.py path/to/annotated-captures.md

It reads the annotated hex dumps — a Markdown document with one ``### G<n>. title``
section per transcript, in the layout the patterns below describe — and writes
``tests/data/golden_transcripts.json`` next to this script.  That JSON is the
record kept in this repository (``docs/protocol.md`` Appendix A lists what each
transcript shows) and the only thing the tests read; this script is kept to show
how it was made, and to redo it if the captures are ever extended: re-run it and
review the diff.

Output layout (one object per transcript, in document order)::

    {"id": "G1", "title": "...", "notes": [...],
     "messages": [
        {"direction": "C->S" | "S->C",
         "kind": "handshake" | "message" | "raw",
         "label": "LEADER request",          # the dump's label line
         "hex": "0100000000000000...",       # every byte shown (before any elision)
         "elided": false,
         "elided_words": 0,                  # N of "... (N words elided) ..."
         "tail_hex": "",                     # bytes shown after the elision
         "annotation": ["header: words=1 type=0 ...", ...],
         "comment": "..."}                   # only for elided or empty messages
     ]}

A message with ``elided: true`` cannot be rebuilt from the dump: ``hex`` is the
prefix that was shown, ``tail_hex`` the suffix, and ``elided_words`` the number
of words in between.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "golden_transcripts.json"

_HEADING = re.compile(r"^### (G\d+[a-z]?)\. (.*)$")
_LABEL = re.compile(r"^(C->S|S->C) (.+):$")
_WORD = re.compile(r"^ {4}((?:[0-9a-f]{2} ){7}[0-9a-f]{2})(?: {1,3}(.*))?$")
_ELIDED = re.compile(r"^\s+\.\.\. \((\d+) words elided\) \.\.\.\s*$")
_RAW_INLINE = re.compile(r"^(C->S|S->C): (.*)$")
_RAW_AFTER = re.compile(r"^\s+\.\.\.then raw (.+?) bytes: ((?:[0-9a-f]{2} ?)+)$")
_HEX_ONLY = re.compile(r"^(?:[0-9a-f]{2} ?)+$")
_NOTE = re.compile(r"^- \*\*(G\d+[a-z]?)\.\*\* (.*)$")


def _hex(text: str) -> str:
    return text.replace(" ", "")


def _new_message(direction: str, kind: str, label: str) -> dict[str, Any]:
    return {
        "direction": direction,
        "kind": kind,
        "label": label,
        "hex": "",
        "elided": False,
        "elided_words": 0,
        "tail_hex": "",
        "annotation": [],
    }


def _parse_block(tid: str, lines: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in lines:
        if not line.strip():
            continue
        m = _LABEL.match(line)
        if m:
            direction, label = m.groups()
            kind = "handshake" if label.startswith("handshake") else "message"
            cur = _new_message(direction, kind, label)
            messages.append(cur)
            continue
        m = _RAW_INLINE.match(line)
        if m:
            direction, rest = m.groups()
            cur = _new_message(direction, "raw", "raw bytes")
            if _HEX_ONLY.match(rest.strip()):
                cur["hex"] = _hex(rest.strip())
            else:
                cur["comment"] = rest.strip()
            messages.append(cur)
            cur = None
            continue
        m = _RAW_AFTER.match(line)
        if m:
            what, data = m.groups()
            raw = _new_message(messages[-1]["direction"], "raw", f"raw {what} bytes")
            raw["hex"] = _hex(data.strip())
            raw["comment"] = line.strip()
            messages.append(raw)
            cur = None
            continue
        m = _ELIDED.match(line)
        if m:
            if cur is None:
                raise ValueError(f"{tid}: elision outside a message: {line!r}")
            cur["elided"] = True
            cur["elided_words"] = int(m.group(1))
            cur["comment"] = (
                f"{m.group(1)} words elided in the spec's dump; only the prefix and "
                "suffix shown there are stored"
            )
            continue
        m = _WORD.match(line)
        if m:
            if cur is None:
                raise ValueError(f"{tid}: hex outside a message: {line!r}")
            key = "tail_hex" if cur["elided"] else "hex"
            cur[key] += _hex(m.group(1))
            cur["annotation"].append((m.group(2) or "").strip())
            continue
        raise ValueError(f"{tid}: unrecognized line in dump: {line!r}")
    return messages


def extract(spec: str) -> list[dict[str, Any]]:
    """Return the transcripts of Appendix A of the spec text."""
    start = spec.index("## Appendix A")
    end = spec.index("## Appendix B")
    lines = spec[start:end].splitlines()
    transcripts: list[dict[str, Any]] = []
    notes: dict[str, list[str]] = {}
    i = 0
    current_note: str | None = None
    while i < len(lines):
        line = lines[i]
        m = _HEADING.match(line)
        if m:
            tid, title = m.groups()
            # The dump is the next fenced block.
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            k = j + 1
            while not lines[k].startswith("```"):
                k += 1
            transcripts.append(
                {"id": tid, "title": title, "messages": _parse_block(tid, lines[j + 1 : k])}
            )
            i = k + 1
            continue
        m = _NOTE.match(line)
        if m:
            current_note = m.group(1)
            notes.setdefault(current_note, []).append(m.group(2).strip())
        elif current_note and line.startswith("  - "):
            notes[current_note].append(line.strip()[2:])
        elif not line.startswith("  "):
            current_note = None
        i += 1
    for t in transcripts:
        t["notes"] = notes.get(t["id"], [])
        # Keep "notes" before "messages" in the output for readability.
        t["messages"] = t.pop("messages")
    return transcripts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} path/to/annotated-captures.md", file=sys.stderr)
        return 2
    spec_path = Path(argv[1])
    transcripts = extract(spec_path.read_text(encoding="utf-8"))
    data = {
        "source": "protocol.md, Appendix A (real captures against dqlite 1.11.1)",
        "generator": "tests/data/extract_golden.py",
        "transcripts": transcripts,
    }
    OUTPUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(len(t["messages"]) for t in transcripts)
    print(f"wrote {len(transcripts)} transcripts, {n} messages to {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
