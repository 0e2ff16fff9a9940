"""The frontend compiles locale strings as vue-i18n messages: `{`, `}`, `@`, `|` and `$` there are syntax, and one
such character in a tooltip makes Nodes 2.0 draw the node as "Node Render Error".  Locale text must be plain."""
import json
from pathlib import Path

import pytest

LOCALES = Path(__file__).resolve().parents[2] / "locales"
SPECIAL = set("{}@|$")


def _strings(value, path):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


@pytest.mark.parametrize("path", sorted(LOCALES.glob("*/*.json")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_locale_strings_have_no_vue_i18n_syntax(path):
    bad = [f"{where}: {text[:80]!r}" for where, text in _strings(json.loads(path.read_text("utf-8")), path.stem)
           if SPECIAL & set(text)]
    assert not bad, "vue-i18n message syntax in locale strings:\n" + "\n".join(bad)
