"""``bigmm init``: a commented configuration template, generated from the schema.

Every section and key of :class:`~bigmm.pipeline.config.RunConfig` is written with its default
and its description (the field's docstring in config.py), so the template cannot drift from the
schema. Sections that are off by default (``cluster.tls``, ``cluster.jobqueue.adaptive``) are
written commented out.
"""

from __future__ import annotations

import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from .._version import __version__
from .config import RunConfig

#: the keys a user must fill in, and what the template writes for them
FILL_IN = {("genotypes", "plink"): None, ("phenotypes", "file"): None, ("output",): "results/run1"}
COMMENT_COLUMN = 40


def _model_of(annotation) -> type[BaseModel] | None:
    """The section model a field holds (``X`` or ``Optional[X]``), or None for a plain value."""
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _scalar(value) -> str:
    """A value as YAML flow text (``null``, ``[2048, 8192]``, ``'01:00:00'``)."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, Path):
        value = str(value)
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _line(indent: str, text: str, comment: str | None) -> str:
    if not comment:
        return indent + text
    return f"{indent + text:<{COMMENT_COLUMN}} # {comment}"


def _section(out: list[str], model: type[BaseModel], path: tuple, depth: int, commented: bool) -> None:
    for name, field in model.model_fields.items():
        if field.exclude:  # not a YAML key (RunConfig.source)
            continue
        key = path + (name,)
        indent = "  " * depth
        prefix = "# " if commented else ""
        sub = _model_of(field.annotation)
        desc = field.description
        if sub is not None:
            off = not field.is_required() and field.get_default() is None
            if key in FILL_IN or not off:
                out.append(_line(indent + prefix, f"{name}:", desc))
                _section(out, sub, key, depth + 1, commented)
            else:  # an optional section, off by default: shown commented out
                out.append(_line(indent + "# ", f"{name}:", f"{desc} (off by default)"))
                _section(out, sub, key, depth + 1, True)
            continue
        if key in FILL_IN:
            value, desc = FILL_IN[key], f"FILL IN: {desc}"
        elif field.is_required():
            value = None
        else:
            value = field.get_default(call_default_factory=True)
        if commented:  # inside a commented section: the indent of its keys follows the "# "
            out.append(_line(indent[:-2] + "#   ", f"{name}: {_scalar(value)}", desc))
        else:
            out.append(_line(indent, f"{name}: {_scalar(value)}", desc))


def render_template() -> str:
    """The commented template of a run configuration (text of a YAML file)."""
    out = [f"# bigmm {__version__} run configuration: every key with its default.",
           "# Fill in genotypes.plink (or zarr / vcf_zarr) and phenotypes.file, then",
           "#   bigmm check THIS_FILE   and   bigmm run THIS_FILE",
           "# Relative paths are relative to this file. Keys left out take the defaults shown.",
           ""]
    _section(out, RunConfig, (), 0, False)
    return "\n".join(out) + "\n"
