"""The README's result tables are exactly what the committed results files regenerate."""

from benchmarks import readme_tables


def test_readme_tables_match_results():
    text = (readme_tables.ROOT / "README.md").read_text()
    block = text[text.index(readme_tables.START): text.index(readme_tables.END) + len(readme_tables.END)]
    assert block == f"{readme_tables.START}\n{readme_tables.render()}\n{readme_tables.END}"


def test_readme_names_the_two_commands():
    text = (readme_tables.ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
