"""Where the engine keeps each database: inside its directory, whatever the name."""

from __future__ import annotations

from pathlib import Path

from dqlitepy.engine import Engine, database_filename
from dqlitepy.engine import database as engine_database


def test_every_name_has_its_file_inside_the_directory(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    for name in ("app", "../etc/passwd", "/abs", "x" * 500, "é", "app"):
        path = engine.path(name)
        assert path == tmp_path / database_filename(name)
        assert path.parent == tmp_path
    assert engine.path("app") is engine.path("app")  # looked up once, then kept


def test_the_paths_kept_stay_bounded_whatever_names_clients_send(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    names = [f"db{n}" for n in range(3 * engine_database._PATHS_CACHED)]
    for name in names:
        assert engine.path(name) == tmp_path / database_filename(name)
    assert 0 < len(engine._paths) <= engine_database._PATHS_CACHED
    assert engine.path(names[0]) == tmp_path / database_filename(names[0])
