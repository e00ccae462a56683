"""``bigmm init``: the commented config template covers the schema and loads once filled in."""

import re
import typing

from pydantic import BaseModel

from bigmm.pipeline.cli import main
from bigmm.pipeline.config import RunConfig, load_config, parse_config
from bigmm.pipeline.template import render_template


def schema_keys(model=RunConfig, prefix=()):
    """Every key path of the schema, walked here independently of the template code."""
    keys = []
    for name, field in model.model_fields.items():
        if name == "source":  # not a YAML key
            continue
        keys.append(prefix + (name,))
        for t in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                keys += schema_keys(t, prefix + (name,))
    return keys


def template_keys(text):
    """Key paths of the template, by indentation; commented-out sections ('# key:') count."""
    keys, stack = [], []
    body = text.split("\n\n", 1)[1]  # after the header
    for line in body.splitlines():
        m = re.match(r"^( *)(?:# ?)?( *)(\w+):", line)
        assert m, f"unexpected template line {line!r}"
        depth = (len(m.group(1)) + len(m.group(2))) // 2
        stack = stack[:depth] + [m.group(3)]
        keys.append(tuple(stack))
    return keys


def test_every_schema_key_is_in_the_template_with_its_description():
    text = render_template()
    assert sorted(template_keys(text)) == sorted(schema_keys())
    for path in schema_keys():
        model = RunConfig
        for k in path[:-1]:
            ann = model.model_fields[k].annotation
            model = next(t for t in (ann, *typing.get_args(ann)) if isinstance(t, type) and issubclass(t, BaseModel))
        desc = model.model_fields[path[-1]].description
        assert desc, f"{'.'.join(path)} has no description (a docstring under the field in config.py)"
        assert f"# {desc}" in text or f"# FILL IN: {desc}" in text or f"# {desc} (off by default)" in text


def test_template_loads_with_the_defaults_once_filled(tmp_path):
    assert main(["init", str(tmp_path / "t.yaml")]) == 0
    text = (tmp_path / "t.yaml").read_text()
    filled = text.replace("  plink: null ", "  plink: data/c ", 1).replace("  file: null ", "  file: p.tsv ", 1)
    assert filled != text
    (tmp_path / "t.yaml").write_text(filled)
    cfg = load_config(tmp_path / "t.yaml")
    # the values written are the schema's defaults: the same as a config giving only the required keys
    ref = parse_config({"genotypes": {"plink": "data/c"}, "phenotypes": {"file": "p.tsv"},
                        "output": "results/run1"}, base=tmp_path)
    assert cfg.model_dump() == ref.model_dump()


def test_init_does_not_overwrite(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text("mine")
    assert main(["init", str(tmp_path / "t.yaml")]) == 2
    assert "exists" in capsys.readouterr().err and (tmp_path / "t.yaml").read_text() == "mine"
    assert main(["init", "-"]) == 0
    assert capsys.readouterr().out == render_template()
