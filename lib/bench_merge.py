"""Merge two copies of one device's bench file (results/bench/<device>.json) record by record.

Two GPU calls of a session may each write the bench file: the second one on a machine that started bare (its copy
lacks the first call's records), or on the warm one (its copy holds them). Replacing one file by the other could
lose measurements; merging cannot: every record section (entries, graph checks, traces, agreement, concurrency,
bookkeeping, and any later dict of records) is joined key by key, and where both copies hold a key, the record
measured later (its 'date') is kept. Standard library only, so that the GPU runner's `--merge` works with the
system Python of a machine without the repository's environment:

    python3 -m lib.bench_merge DEST SRC [SRC ...]     (merges each SRC into DEST, written atomically)
"""
from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from lib.results import atomic_write_json, json_kind, read_json

_OLDEST = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)


def _when(record) -> _dt.datetime:
    """When a record (or a whole file, by its 'updated') was measured; the oldest time where it does not say."""
    stamp = (record.get("date") or record.get("updated")) if isinstance(record, dict) else None
    try:
        when = _dt.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return _OLDEST
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _is_section(value) -> bool:
    """A dict of records (each a dict), e.g. 'entries'; top-level scalars such as 'device' are not."""
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


def bench_file_problem(data) -> str:
    """What makes `data` (a bench file's parsed JSON) no bench file: '' for one (a JSON object with the device's
    name and, for every dict in it, a section of records, 'entries' among them)."""
    if not isinstance(data, dict):
        return f"a JSON {json_kind(data)}, not an object"
    if not isinstance(data.get("device"), str):
        return "no 'device' name"
    legacy = {"graph_check"}  # one record: the graph check of files written before they were per model
    bad = [name for name, value in data.items() if isinstance(value, dict) and not _is_section(value)
           and name not in legacy or name == "entries" and not isinstance(value, dict)]
    return f"{', '.join(repr(b) for b in bad)} not a section of records" if bad else ""


def merge_bench(ours: dict, theirs: dict) -> tuple[dict, list[str]]:
    """`ours` with `theirs` merged in, and what changed ('section/key: added' or 'replaced'). Both must be the
    same device's; top-level values other than record sections come from the later file ('updated')."""
    if ours.get("device") != theirs.get("device"):
        raise ValueError(f"cannot merge bench files of different devices: {ours.get('device')!r} and "
                         f"{theirs.get('device')!r}; each device has its own results/bench/<device>.json")
    newer_file = _when(theirs) > _when(ours)
    merged, changes = dict(ours), []
    for name, value in theirs.items():
        if _is_section(value) and _is_section(ours.get(name, {})):
            section = dict(ours.get(name) or {})
            for key, record in value.items():
                if key not in section:
                    section[key] = record
                    changes.append(f"{name}/{key}: added")
                elif record != section[key] and _when(record) > _when(section[key]):
                    section[key] = record
                    changes.append(f"{name}/{key}: replaced by the later measurement")
            merged[name] = section
        elif name not in ours or newer_file:
            merged[name] = value
    return merged, changes


def merge_bench_file(dest: Path | str, src: Path | str) -> list[str]:
    """Merge the bench file `src` into `dest` (atomic write; `dest` need not exist); returns the changes."""
    dest, src = Path(dest), Path(src)
    theirs = read_json(src)
    if problem := bench_file_problem(theirs):
        raise ValueError(f"not a bench file ({problem})")
    if not dest.exists():
        atomic_write_json(dest, theirs)
        return [f"{dest.name}: new file"]
    ours = read_json(dest)
    merged, changes = merge_bench(ours, theirs)
    if merged != ours:
        atomic_write_json(dest, merged)
    return changes


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python3 -m lib.bench_merge DEST SRC [SRC ...] (bench files of one device)", file=sys.stderr)
        return 2
    dest = Path(args[0])
    for src in args[1:]:
        if not Path(src).is_file():
            print(f"lib.bench_merge: no bench file at {src}", file=sys.stderr)
            return 1
        try:
            changes = merge_bench_file(dest, src)
        except (ValueError, OSError) as err:  # json.JSONDecodeError is a ValueError
            print(f"lib.bench_merge: {src} into {dest}: {err}", file=sys.stderr)
            return 1
        print(f"{dest}: {len(changes)} record(s) from {src}" + "".join(f"\n  {c}" for c in changes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
