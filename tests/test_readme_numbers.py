"""The README's benchmark tables are what their JSON files in benchmarks/results/ render to."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_tables():
    # benchmarks/ is a folder of scripts, not a package: load the module from its file
    spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


tables = _load_tables()
README = (ROOT / "README.md").read_text()


def test_every_table_is_marked_once_in_the_readme():
    assert sorted(tables.blocks(README)) == sorted(tables.TABLES)


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_readme_table_equals_its_json(name):
    assert tables.blocks(README)[name] == tables.render(name), (
        f"README table {name!r} differs from {', '.join(tables.TABLES[name].sources)}; "
        "run `python benchmarks/readme_tables.py --write`"
    )


def test_an_edited_number_is_caught():
    """The check compares numbers, not just shapes: change one digit of one cell and it reports that table."""
    body = tables.blocks(README)["acac"]
    edited = body.replace("| 24.5 |", "| 24.6 |", 1)
    assert edited != body
    assert tables.mismatches(README.replace(body, edited)) == ["acac"]


def test_rows_follow_the_json(tmp_path):
    """Rendering reads the JSON: a changed value in a copy of the results changes that cell."""
    import json

    doc = json.loads((ROOT / "benchmarks" / "results" / "bench_relax.json").read_text())
    batched = next(r for r in doc["rows"] if r["optimizer"] == "FIRE" and r["path"] == "batched")
    batched["seconds"], batched["speedup"] = 1.25, 8.0
    (tmp_path / "bench_relax.json").write_text(json.dumps(doc))
    fire = next(line for line in tables.render("relax", tmp_path).splitlines() if line.startswith("| FIRE "))
    assert "| 1.25 |" in fire and fire.endswith("| 8.0x |")
